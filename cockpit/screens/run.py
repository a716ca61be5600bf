"""The run screen: the loss chart and samples; the metrics grid (lr, grad norm, throughput and every eval
metric, a chart each); the memory, system and log panes; the error pane of a failed run; the status line.

It is a view of one RunState folded from the event stream by the shared reducer (common/state.py): a
timer every TICK_S seconds reads the new bytes of the log once (never a polling storm), folds every new
event, and redraws only the panes whose inputs changed, so a burst of events renders once; while a CPU
trainer runs, frames and the heavy panes are paced (pacing.py: frame_interval, redraw_interval) so the UI
takes about 1% of a core from training. The first catch-up
read of an existing log (a finished run replays, a live one is watched) runs in a worker thread.
"""
from __future__ import annotations

import time
from pathlib import Path

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.widgets import Footer

from cockpit.messages import StateLoaded
from cockpit.screens.base import ChartKeys, CockpitScreen
from cockpit.screens.pacing import TICK_S, RedrawGate, frame_interval, heavy_render_seconds, redraw_interval
from cockpit.trainer_proc import failure_event
from cockpit.widgets.error_pane import ErrorPane
from cockpit.widgets.gpu_pane import GpuPane
from cockpit.widgets.log_pane import LogPane
from cockpit.widgets.loss_plot import LossPlot
from cockpit.widgets.memory_pane import MemoryPane
from cockpit.widgets.metric_chart import MetricChart
from cockpit.widgets.metrics_grid import MetricsGrid
from cockpit.widgets.samples_pane import SamplesPane
from cockpit.widgets.status_line import StatusLine
from common.events import as_dict
from common.state import RunState, fold_available, writer_gone

# The panes, in the order they redraw (each a RunPane: cockpit/widgets/run_pane.py).
PANES = (LossPlot, SamplesPane, MetricsGrid, MemoryPane, GpuPane, LogPane, ErrorPane, StatusLine)


def pane_signatures(s, note: str | None = None) -> dict[str, tuple]:
    """What each pane draws from, as a cheap hashable: a pane redraws only when its own changed (a system
    sample must not re-render the loss chart)."""
    return {p.pane: p.signature(s, note) for p in PANES}


def stopped_farewell(s, log) -> str:
    """What the terminal keeps after `q` → stop: where the run ended, its checkpoint, how to go on."""
    run_dir = Path(str(log)).parent
    line = f"cockpit: the run {s.status} at step {s.step}"
    if s.checkpoints:
        line += f"; checkpoint {s.checkpoints[-1][1]}"
    if s.status in ("stopped", "killed", "failed") and s.checkpoints:
        line += f"; resume with: cockpit train {s.preset or 'PRESET'} --resume {run_dir}"
    return line


class RunScreen(ChartKeys, CockpitScreen):
    HELP_TITLE = "run screen"
    # the footer shows the keys in this order as far as it reaches (help first); `?` lists every one
    BINDINGS = [
        Binding("question_mark", "help", "Help", key_display="?"),
        Binding("p", "pause", "Pause/resume"),
        Binding("s", "sample", "Sample"),
        Binding("c", "checkpoint", "Checkpoint"),
        Binding("x", "stop", "Stop"),
        Binding("q", "quit", "Quit"),
        Binding("g", "choose_metrics", "Metrics shown"),
        Binding("z", "enlarge", "Enlarge chart"),
        Binding("k", "kernels", "Kernels"),
        Binding("i", "internals", "Internals"),
        Binding("e", "smoothing", "EMA"),
        Binding("left_square_bracket", "older", "Older sample", key_display="["),
        Binding("right_square_bracket", "newer", "Newer sample", key_display="]"),
        Binding("d", "sample_diff", "Sample diff"),
        Binding("w", "save_sample", "Save sample"),
        Binding("y", "copy_sample", "Copy sample"),
        Binding("l", "log_y", "Log-y", show=False),
        Binding("t", "x_axis", "X-axis: step, tokens, time", show=False),
        Binding("m", "markers", "Markers on/off", show=False),
        Binding("tab", "focus_next", "Next metric chart", show=False),
        Binding("S", "app.screenshot", "Screenshot (SVG, into the run directory)", key_display="S", show=False),
        Binding("left_curly_bracket", "diff_right(-1)", "Diff: right side older", key_display="{", show=False),
        Binding("right_curly_bracket", "diff_right(1)", "Diff: right side newer", key_display="}", show=False),
        Binding("escape", "back", "Back"),
    ]

    def __init__(self, source, *, follow_pid: bool = True):
        super().__init__()
        self.source = source
        self.state = RunState()
        self.loaded = False
        self.finished = False          # the launched trainer's process has exited and was accounted for
        self.note: str | None = None   # "pausing…", "stopping…": a command sent, not yet acknowledged
        self.prompts: list[str] = []   # captions typed for samples of a text-conditioned run, oldest first
        self.quit_when_done = False
        self.follow_pid = follow_pid
        self._drawn = -1
        self._drawn_note: str | None = None
        self._gate = RedrawGate()
        self._held_back = False        # a pane's change waits for its redraw interval
        self._frame_at = float("-inf")  # when the latest frame was drawn (live runs: paced)
        self._timer = None

    # --- layout --------------------------------------------------------------------------------------
    def compose(self) -> ComposeResult:
        with Vertical(id="run"):
            with Horizontal(id="run-top"):
                yield LossPlot(id="loss")
                yield SamplesPane(id="samples")
            yield MetricsGrid(id="metrics")
            with Horizontal(id="run-bottom"):
                yield MemoryPane(id="memory")
                yield GpuPane(id="gpu")
                yield LogPane(id="log")
            yield ErrorPane(id="error")
            yield StatusLine(id="status")
        yield Footer(show_command_palette=False)

    def on_mount(self):
        self.query_one("#loss").border_title = "loss"
        self.query_one("#samples").border_title = "samples"
        self.query_one("#memory").border_title = "memory"
        self.query_one("#gpu").border_title = "GPU"
        self.query_one("#log").border_title = "log"
        self.query_one(StatusLine).update_state(None)
        self.catch_up()

    @work(thread=True, exclusive=True, group="catch-up")
    def catch_up(self):
        """Fold everything already in the log (a finished run: all of it) off the UI thread."""
        state = RunState()
        try:
            fold_available(self.source.poll, state)
        except Exception as e:  # noqa: BLE001
            self.post_message(StateLoaded(state, f"{type(e).__name__}: {e}"))
            return
        self.post_message(StateLoaded(state))

    def on_state_loaded(self, msg: StateLoaded):
        self.state = msg.state
        self.loaded = True
        if msg.error:
            self.notify(f"reading the log failed: {msg.error}", severity="error", markup=False)
        self.tick()
        self._timer = self.set_interval(TICK_S, self.tick)

    # --- the tick: fold new events, notice the trainer ending, redraw once ---------------------------
    def tick(self):
        s = self.state
        s.apply_all(self.source.poll())
        s.note_output(self.source.output.poll())
        skipped = self.source.follower.stats.skipped
        if skipped != s.skipped_lines:
            s.skipped_lines = skipped
            s.version += 1
        if self.source.launched and not self.finished:
            rc = self.source.returncode()
            if rc is not None:
                self._trainer_exited(rc)
        elif (not self.source.launched and s.end is None and s.status != "killed" and self.follow_pid
              and s.pid and s.run_id):
            self._check_writer()
        if self.note and self._acknowledged():
            self.note = None
        if s.version != self._drawn or self.note != self._drawn_note or self._held_back:
            self.redraw()

    def _trainer_exited(self, rc: int):
        s = self.state
        s.apply_all(self.source.finish())
        s.note_output(self.source.output.poll())
        if s.end is None:
            s.apply(failure_event(s, rc, self.source.out_path))
        if s.exit_code is None:
            s.exit_code = rc
        s.version += 1
        self.finished = True
        self.note = None
        self.app.run_ended(self)
        if self.quit_when_done:
            self.app.farewell = stopped_farewell(s, self.source.path)
            self.app.exit()

    def _check_writer(self):
        """Watching someone else's run: once its trainer is gone without run_end, it was killed."""
        s = self.state
        if writer_gone(s):
            s.apply_all(self.source.finish())
            s.mark_killed()

    def _acknowledged(self) -> bool:
        s = self.state
        return {"pausing…": s.status == "paused", "resuming…": s.status == "running"}.get(
            self.note, s.ended)

    @property
    def alive(self) -> bool:
        """The trainer this screen launched is still running its run (once run_end is logged the run is over,
        though its process may take a moment more to exit: nothing is left to stop or to leave running)."""
        return (self.source.launched and not self.finished and self.state.end is None
                and self.source.returncode() is None)

    @property
    def paused_or_pausing(self) -> bool:
        """The run is paused, or a pause was sent and not acknowledged yet: `resume` is what it needs next."""
        return self.state.status == "paused" or self.note == "pausing…"

    @property
    def writer_alive(self) -> bool:
        """Someone is still writing this log (our trainer, or a watched one)."""
        if self.source.launched:
            return self.alive
        return self.state.end is None and self.state.status in ("running", "paused", "waiting")

    def redraw(self, force: bool = False):
        """Redraw the panes whose inputs changed. While a CPU trainer runs, the screen draws at most one
        frame per frame_interval, and within frames the heavy panes (chart, memory, system) are paced by
        redraw_interval: every millisecond of UI work stalls the trainer's threads. A change held back is
        drawn by a later tick; `force` (a command's note, the run ending) draws at once."""
        s = self.state
        live = s.status == "running" and self.writer_alive
        if live and not force:
            now = time.monotonic()
            if now - self._frame_at < frame_interval(s.device):
                self._held_back = True
                return
            self._frame_at = now
        self._drawn, self._drawn_note = s.version, self.note
        plot = self.query_one(LossPlot)
        if not len(s.train) and s.logs:  # before the first step: what the trainer is doing
            plot.empty_message = f"waiting for the first step · {s.logs[-1][1]}"
        panes = [self.query_one(p) for p in PANES]
        sigs = pane_signatures(s, self.note)
        heavy = heavy_render_seconds(p.render_seconds for p in panes if p.heavy)
        pace = redraw_interval(heavy, s.device) if live else 0.0
        for p in panes:
            if self._gate.due(p.pane, sigs[p.pane], pace if p.heavy else 0.0, force):
                p.update_state(s, self.note)
        self._held_back = self._gate.pending(sigs)

    # --- commands to the trainer ---------------------------------------------------------------------
    def _send(self, cmd: str, note: str | None, prompt: str | None = None) -> bool:
        if not self.writer_alive:
            self.notify(f"the run has ended ({self.state.status}); `{cmd}` needs a live trainer",
                        severity="warning")
            return False
        why = self.source.send(cmd, self.state.pid, self.state.run_started, prompt=prompt)
        if why:
            self.notify(why, severity="warning", markup=False)
            return False
        if note:
            self.note = note
            self.redraw(force=True)
        return True

    def action_pause(self):
        if self.paused_or_pausing:
            self._send("resume", "resuming…")
        else:
            self._send("pause", "pausing…")

    @property
    def text_conditioned(self) -> bool:
        """The run generates from captions (its trainer said so in run_start's dataset): `s` asks for one."""
        return (self.state.dataset or {}).get("conditioning") == "text"

    def action_sample(self):
        if not self.text_conditioned:
            if self._send("sample", None):
                self.notify("sample requested: it appears after the current step")
            return
        from cockpit.screens.prompt import PromptScreen

        def typed(prompt: str | None):
            if prompt is None:
                return
            if self._send("sample", None, prompt=prompt or None):
                self.notify(f"sample of {prompt!r} requested: it appears after the current step" if prompt
                            else "sample of the fixed prompts requested: it appears after the current step",
                            markup=False)

        examples = (self.state.dataset or {}).get("prompts") or []
        self.app.push_screen(PromptScreen(self.prompts, [str(e) for e in examples]), typed)

    def action_checkpoint(self):
        if self._send("checkpoint", None):
            self.notify("checkpoint requested: it is written after the current step")

    def action_stop(self):
        """x asks first: a stop cannot be taken back (the run ends, with a checkpoint, and is resumable)."""
        from cockpit.screens.confirm import ConfirmScreen

        if not self.writer_alive:
            self._send("stop", "stopping…")  # says why it cannot
            return
        whose = "this run" if self.source.launched else f"the watched run (SIGTERM to trainer pid {self.state.pid})"
        question = (f"Stop {whose} at its next step? It writes a checkpoint, then ends (status stopped); resume "
                    f"it later with: cockpit train {self.state.preset or 'PRESET'} --resume "
                    f"{Path(str(self.source.path)).parent}")

        def answered(yes: bool | None):
            if yes:
                self._send("stop", "stopping…")

        self.app.push_screen(ConfirmScreen("stop the run?", question), answered)

    def check_action(self, action: str, parameters) -> bool | None:
        """Pause, sample and checkpoint go down the stdin of a trainer this cockpit launched: on a watched
        run they cannot work, so the footer does not offer them (x works: it sends SIGTERM, except to the
        trainer of a TensorBoard run, which the cockpit never signals)."""
        if action in ("pause", "sample", "checkpoint") and not self.source.launched:
            return False
        if action == "stop" and not self.source.stoppable:
            return False
        return True

    # --- the metrics grid -------------------------------------------------------------------------------
    def action_enlarge(self):
        """z: the focused metric chart (else the first) fills the screen; z or esc again restores the grid."""
        if self.maximized is not None:
            self.minimize()
            return
        charts = [c for c in self.query(MetricChart) if c.display]
        if not charts:
            self.notify("no metric to enlarge yet: lr, grad norm and throughput come with the first logged step",
                        severity="warning")
            return
        chart = self.focused if isinstance(self.focused, MetricChart) else charts[0]
        chart.focus()
        self.maximize(chart)

    def action_choose_metrics(self):
        from cockpit.screens.metrics_chooser import MetricsChooser

        grid = self.query_one(MetricsGrid)
        if not grid.available:
            self.notify("no metrics yet: they come with the first logged step", severity="warning")
            return

        def chosen(hidden: set[str] | None):
            if hidden is not None:
                grid.set_hidden(hidden)

        self.app.push_screen(MetricsChooser(grid.available, grid.hidden), chosen)

    def action_kernels(self):
        from cockpit.screens.kernels import KernelsScreen

        self.app.push_screen(KernelsScreen([as_dict(ev) for ev in self.state.kernels.values()]))

    def action_internals(self):
        from cockpit.screens.internals import InternalsScreen

        self.app.push_screen(InternalsScreen(lambda: self.state))

    # --- view keys (the chart's: ChartKeys) -----------------------------------------------------------
    def action_older(self):
        self.query_one(SamplesPane).step_back()

    def action_newer(self):
        self.query_one(SamplesPane).step_forward()

    def action_sample_diff(self):
        why = self.query_one(SamplesPane).toggle_diff()
        if why:
            self.notify(why, severity="warning", markup=False)

    def action_diff_right(self, delta: int):
        self.query_one(SamplesPane).move_diff_right(delta)

    def action_save_sample(self):
        self.query_one(SamplesPane).save_shown(self.source.run_dir)

    def action_copy_sample(self):
        self.query_one(SamplesPane).copy_shown()

    # --- leaving -------------------------------------------------------------------------------------
    def action_back(self):
        if self.maximized is not None:
            self.minimize()
            return
        if self.alive:
            self.notify("the run is still going: x stops it; q quits (and can leave it running headless)",
                        severity="warning")
            return
        self.app.back_to_picker(self)

    def detach(self):
        """Let the trainer go on headless when the UI leaves: a paused run is resumed first (nobody could
        resume it once the pipe is gone), then the pipe is closed; the log keeps growing."""
        if self.paused_or_pausing:
            self.source.send("resume")
        self.source.close()

    def ask_quit(self):
        """q with the trainer alive: stop it, or leave it running headless."""
        from cockpit.screens.quit import QuitScreen

        def chosen(choice):
            if choice == "stop":
                if self.source.send("stop") is None:
                    self.note = "stopping…"
                    self.quit_when_done = True
                    self.redraw(force=True)
                    self.notify("stopping: the trainer writes a checkpoint, then the cockpit exits")
            elif choice == "leave":
                self.app.leave_running(self)
        self.app.push_screen(QuitScreen(str(self.source.path)), chosen)

    def on_unmount(self):
        if self._timer is not None:
            self._timer.stop()
