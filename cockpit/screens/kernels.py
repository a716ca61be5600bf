"""`k`: the kernels panel. PyTorch reference vs Triton kernel (correctness, time, memory) as a table and a
bar chart of speedup and memory saving: at once, the run's own `kernel` events and the results last measured
on this machine (cockpit/kernels_cache.py). The benchmark, `python -m cockpit kernels --json` in a subprocess
worker, runs only when asked (it takes minutes in Triton's CPU interpreter and slows a CPU training run while
it lasts): `r` runs all kernels, Enter the highlighted one alone (`--only NAME`); each result replaces the
cached one of its key as it arrives. A result from the interpreter shows its correctness and memory, never
its timings as a speedup: they say nothing of a GPU."""
from __future__ import annotations

import importlib.util
import subprocess
import sys
import time

from rich.markup import escape
from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.widgets import DataTable, Footer, Static

from cockpit import kernels_cache
from cockpit.kernels_cmd import parse_line
from cockpit.messages import KernelEvent, KernelsDone
from cockpit.screens.base import CockpitScreen
from cockpit.widgets.kernel_chart import NEEDS_GPU, KernelChart, kernel_metrics
from cockpit.widgets.kernels_table import KernelsTable
from kernels._table import interpreted

COLUMNS = ("kernel", "shape", "dtype", "backend", "ok", "max err", "torch ms", "triton ms", "speedup", "mem saved")


def kernels_available() -> bool:
    return importlib.util.find_spec("cockpit.kernels_cmd") is not None


def kernels_argv(only: str | None = None) -> list[str]:
    argv = [sys.executable, "-m", "cockpit", "kernels", "--json"]
    return argv + ["--only", only] if only else argv


def _key(ev: dict) -> tuple:
    return (str(ev.get("name")), str(ev.get("shape")), str(ev.get("dtype")), str(ev.get("backend")))


def _f(x, fmt):
    return format(x, fmt) if isinstance(x, (int, float)) and not isinstance(x, bool) else "-"


class KernelsScreen(CockpitScreen):
    HELP_TITLE = "kernels"
    BINDINGS = [
        Binding("question_mark", "help", "Help", key_display="?"),  # first: the footer may be cut
        Binding("enter", "run_one", "Run kernel", show=False),
        Binding("r", "run_all", "Run all"),
        Binding("escape,q", "close", "Back"),
    ]

    def __init__(self, events: list[dict] | None = None, argv_for=kernels_argv):
        super().__init__()
        self.results: dict[tuple, dict] = {_key(e): e for e in (events or [])}
        self.argv_for = argv_for
        self.generation = 0
        self.running: str | None = None
        self.proc: subprocess.Popen | None = None
        self.last_log = ""
        self.cached_at: float | None = None   # when the newest cached result shown was measured
        self.cache_note: str | None = None     # what the cache ignored, or why it was not written

    def compose(self) -> ComposeResult:
        with Vertical(id="kernels"):
            yield Static("", id="kernels-status")
            yield KernelsTable(cursor_type="row", zebra_stripes=True, id="kernels-table")
            with VerticalScroll(id="kernels-chart-box"):
                yield KernelChart(id="kernels-chart")
        yield Footer(show_command_palette=False)

    def on_mount(self):
        table = self.query_one(DataTable)
        for c in COLUMNS:
            table.add_column(c, key=c)
        self.query_one("#kernels-chart-box").border_title = "Triton vs PyTorch"
        if not kernels_available():
            self.refill()
            self.set_status(Text.assemble(
                ("The kernels comparison is not available yet: ", "bold yellow"),
                "cockpit/kernels_cmd.py (`cockpit kernels --json`) is not in this install. "
                "It comes with the kernels issue; nothing was run."))
            return
        cached = kernels_cache.load()
        for ev in cached.events:  # the run's own results first; the cache fills in the rest
            self.results.setdefault(_key(ev), ev)
        self.cached_at, self.cache_note = (cached.saved_at if cached.events else None), cached.note
        self.refill()
        self.set_status(self.idle_status())

    def idle_status(self) -> Text:
        """What the panel shows and what the keys do, while no benchmark runs."""
        if not self.results:
            from trainers.config import cuda_available

            where = ("on the GPU" if cuda_available() else
                     "in Triton's CPU interpreter: it takes minutes, and slows a CPU training run while it lasts")
            text = Text(f"no results yet: r runs the comparison ({where})", style="yellow")
        else:
            text = Text()
            if self.cached_at is not None:
                when = time.strftime("%Y-%m-%d %H:%M", time.localtime(self.cached_at))
                text.append(f"results measured on this machine up to {when}; ", style="dim")
            text.append("r re-runs all kernels, Enter the highlighted one", style="dim")
        return self._with_notes(text)

    def _with_notes(self, text: Text) -> Text:
        if any(interpreted(e) for e in self.results.values()):
            text.append("\n" + NEEDS_GPU, style="yellow")
        if self.cache_note:
            text.append("\n" + self.cache_note, style="dim")
        return text

    def set_status(self, text):
        self.query_one("#kernels-status", Static).update(text)

    def refill(self):
        table = self.query_one(DataTable)
        row = table.cursor_row
        table.clear()
        events = list(self.results.values())
        for ev in events:
            speed, saving = kernel_metrics(ev)
            ok = Text("ok", style="green") if ev.get("ok") else Text("FAIL", style="bold red")
            shape = ev.get("shape")
            shape = "x".join(map(str, shape)) if isinstance(shape, (list, tuple)) else str(shape)
            words = (str(ev.get("name")), shape, str(ev.get("dtype")), str(ev.get("backend", "-")))
            if interpreted(ev):  # interpreter timings say nothing of a GPU: not shown as if they did
                times = ("n/a", "n/a", "n/a")
            else:
                times = (_f(ev.get("torch_ms"), ".3f"), _f(ev.get("triton_ms"), ".3f"),
                         _f(speed, ".3g") + ("x" if speed else ""))
            table.add_row(*map(escape, words), ok, _f(ev.get("max_abs_err"), ".1e"), *times,
                          (_f(saving * 100, ".1f") + "%") if saving is not None else "-")
        if events and row is not None:
            table.move_cursor(row=min(row, len(events) - 1))
        self.query_one(KernelChart).set_events(events)

    # --- the subprocess ------------------------------------------------------------------------------
    def run_kernels(self, only: str | None):
        if self.running is not None:
            self.notify(f"already running ({self.running})", severity="warning", markup=False)
            return
        self.generation += 1
        self.running = only or "all kernels"
        argv = self.argv_for(only)
        shown = "cockpit kernels --json" + (f" --only {only}" if only else "")
        from trainers.config import cuda_available

        slow = "" if cuda_available() else " (no GPU: Triton runs in its interpreter, which takes a while)"
        self.set_status(Text(f"running {shown} …{slow}", style="yellow"))
        self._worker(argv, self.generation)

    @work(thread=True, group="kernels")
    def _worker(self, argv: list[str], generation: int):
        try:
            proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    text=True, start_new_session=True)
        except OSError as e:
            self.post_message(KernelsDone(-1, str(e), generation))
            return
        self.proc = proc
        other = []
        for line in proc.stdout:
            ev = parse_line(line)
            if ev is None:
                other.append(line.rstrip())
                continue
            if ev["type"] == "kernel":  # kept at once: closing the panel mid-run loses nothing measured
                self.cache_note = kernels_cache.save([ev])
            self.post_message(KernelEvent(ev, generation))
        err = proc.stderr.read()
        rc = proc.wait()
        tail = "\n".join((other + err.splitlines())[-8:])
        self.post_message(KernelsDone(rc, tail, generation))

    def on_kernel_event(self, msg: KernelEvent):
        if msg.generation != self.generation:
            return
        if msg.event.get("type") == "log":
            self.last_log = msg.event["message"]
            self.set_status(Text(f"running {self.running} … {self.last_log}", style="yellow"))
            return
        self.results[_key(msg.event)] = msg.event
        self.refill()

    def on_kernels_done(self, msg: KernelsDone):
        if msg.generation != self.generation:
            return
        what, self.running, self.proc = self.running, None, None
        failed = [e for e in self.results.values() if not e.get("ok", True)]
        if msg.returncode == 0 or (msg.returncode == 1 and failed):
            text = Text(f"done: {what}" + (f" · {len(failed)} FAILED the tolerance check" if failed else ""),
                        style="red" if failed else "green")
            if self.last_log:
                text.append(f"\n{self.last_log}", style="dim")
            text.append("\nEnter re-runs the highlighted kernel, r re-runs all", style="dim")
            self.set_status(self._with_notes(text))
        else:
            self.set_status(Text.assemble((f"`cockpit kernels --json` failed (exit {msg.returncode})", "bold red"),
                                          ("\n" + msg.output) if msg.output else ""))

    # --- actions -------------------------------------------------------------------------------------
    def action_run_one(self):
        table = self.query_one(DataTable)
        events = list(self.results.values())
        if not kernels_available():
            self.notify("cockpit/kernels_cmd.py is not available yet", severity="warning")
        elif events and table.cursor_row is not None:
            self.run_kernels(str(events[table.cursor_row].get("name")))

    @on(DataTable.RowSelected)
    def _selected(self, _event):
        self.action_run_one()

    def action_run_all(self):
        if not kernels_available():
            self.notify("cockpit/kernels_cmd.py is not available yet", severity="warning")
        else:
            self.run_kernels(None)

    def action_close(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
        self.generation += 1
        self.app.pop_screen()
