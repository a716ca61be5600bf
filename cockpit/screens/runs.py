"""The runs browser (`r` in the picker, `cockpit runs`): every run under the runs directory with preset,
architecture, status, steps, best val loss, tokens/s, params, wall time and start date, from the run index
(cockpit/runs/index.py: built from the logs alone, re-read every 2 s). Sortable by any column, `/` filters
(words, `field:text`, `best_val<2`), Enter opens a run (a finished one replays, a running one is watched
live), space marks several and `c` compares them, `r` resumes a stopped, killed or failed run from its
checkpoint, `l` relaunches one (a new run of its preset with its config), `d` deletes the highlighted run after
asking. At any width the run ids show in full: the other columns shrink first (cockpit.runs.table.SHRINK)."""
from __future__ import annotations

import time

from rich.markup import escape
from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.widgets import DataTable, Footer, Input, Static

from cockpit.messages import LaunchRequested, RunsIndexed
from cockpit.screens.base import CockpitScreen
from cockpit.widgets.runs_table import RunsTable

STATUS_STYLE = {"running": "bold green", "completed": "green", "stopped": "yellow", "failed": "bold red",
                "killed": "red", "empty": "dim", "unreadable": "dim red"}
REFRESH_S = 2.0


class RunsScreen(CockpitScreen):
    HELP_TITLE = "runs browser"
    BINDINGS = [
        Binding("question_mark", "help", "Help", key_display="?"),  # first: the footer may be cut
        Binding("enter", "open", "Open", show=False),
        Binding("space", "mark", "Mark"),
        Binding("c", "compare", "Compare"),
        Binding("r", "resume", "Resume"),
        Binding("l", "relaunch", "Relaunch"),
        Binding("s", "sort_next", "Sort"),
        Binding("S", "sort_reverse", "Reverse", key_display="S"),
        Binding("slash", "filter", "Filter", key_display="/"),
        Binding("d", "delete", "Delete"),
        Binding("escape", "back", "Back"),
        Binding("q", "quit", "Quit"),
    ]
    KEYS_HELP = {"↑/↓, j/k": "move", "click a column title": "sort by it (again: reverse)",
            "filter examples": "gpt · status:killed · best_val<2 · steps>=1000 · model.n_layer:4"}

    def __init__(self, root: str | None = None, refresh_s: float | None = REFRESH_S):
        super().__init__()
        from cockpit.runs.table import COLUMNS
        from common.paths import runs_root

        self.root = runs_root(root)
        self.columns = COLUMNS
        self.runs: list = []
        self.shown: list = []
        self.marked: set[str] = set()
        self.sort_key = "started"
        self.reverse = True
        self.query_text = ""
        self.refresh_s = refresh_s
        self.loaded = False
        self.widths: dict[str, int] | None = None   # the columns' widths as last fitted to the table

    def compose(self) -> ComposeResult:
        with Vertical(id="runs"):
            yield Static("", id="runs-title")
            yield Input(placeholder="filter: words, field:text, best_val<2, steps>=1000, model.n_layer:4",
                        id="runs-filter")
            yield RunsTable(cursor_type="row", zebra_stripes=True, id="runs-table")
            yield Static("", id="runs-detail")
        yield Footer(show_command_palette=False)

    VIEW = ("sort_key", "reverse", "marked")  # what reopening the browser keeps

    def on_mount(self):
        view = getattr(self.app, "runs_view", None)
        if view and view.get("root") == str(self.root):
            self.sort_key, self.reverse, self.marked = view["sort_key"], view["reverse"], set(view["marked"])
        self.reindex()
        if self.refresh_s:
            self.set_interval(self.refresh_s, self.reindex)
        self.query_one(RunsTable).focus()

    def on_resize(self, _event):
        if self.loaded:
            self.refill()

    @work(thread=True, exclusive=True, group="runs-index")
    def reindex(self):
        from cockpit.runs.index import index_runs

        try:
            self.post_message(RunsIndexed(index_runs(self.root)))
        except Exception as e:  # noqa: BLE001
            self.post_message(RunsIndexed([], f"{type(e).__name__}: {e}"))

    def on_runs_indexed(self, msg: RunsIndexed):
        if msg.error:
            self.notify(f"reading the runs failed: {msg.error}", severity="error", markup=False)
        self.runs = msg.runs
        self.loaded = True
        self.refill()

    # --- the table -----------------------------------------------------------------------------------
    def refill(self):
        from cockpit.runs.query import filter_runs, sort_runs
        from cockpit.runs.table import cut, run_cells

        table = self.query_one(RunsTable)
        keep = self.highlighted()
        keep = str(keep.path) if keep is not None else None
        shown = sort_runs(filter_runs(self.runs, self.query_text), self.sort_key, reverse=self.reverse)
        self.shown = shown
        row = table.cursor_row
        now = time.time()
        rows = [run_cells(r, now) for r in shown]
        widths = self.fit(rows)
        if widths != self.widths or not table.columns:
            table.clear(columns=True)
            table.add_column(" ", key="mark", width=1)
            for key, title in self.columns:
                table.add_column(cut(title, widths[key]), key=key, width=widths[key])
            self.widths = widths
        else:
            table.clear()
        status_i = [k for k, _ in self.columns].index("status")
        for r, cells in zip(shown, rows):
            cells = [cut(c, widths[k]) for c, (k, _) in zip(cells, self.columns)]
            cells[status_i] = Text(cells[status_i], style=STATUS_STYLE.get(r.status, ""))
            mark = Text("●", style="bold yellow") if str(r.path) in self.marked else ""
            table.add_row(mark, *(escape(c) if isinstance(c, str) else c for c in cells), key=str(r.path))
        paths = [str(r.path) for r in shown]
        if keep in paths:
            table.move_cursor(row=paths.index(keep), scroll=False)
        elif shown and row is not None:
            table.move_cursor(row=min(row, len(shown) - 1))
        self.show_title()
        self.show_detail()

    def fit(self, rows: list[list[str]]) -> dict[str, int]:
        """Each column's width: its widest cell (or title), shrunk (cockpit.runs.table.fit_widths) to what the
        table has room for, the cells' padding and the vertical scrollbar (when the rows need one) left out."""
        from cockpit.runs.table import fit_widths

        table = self.query_one(RunsTable)
        natural = {k: max([len(title)] + [len(r[i]) for r in rows]) for i, (k, title) in enumerate(self.columns)}
        if not table.size.width:   # not laid out yet: the next resize fits it
            return natural
        gutter = 2 * table.cell_padding * (len(self.columns) + 1) + 1      # every cell's padding, the mark
        scrollbar = table.styles.scrollbar_size_vertical if len(rows) + table.header_height > table.size.height else 0
        room = table.size.width - scrollbar - gutter
        return fit_widths(natural, room)

    def show_title(self):
        arrow = "↓" if self.reverse else "↑"
        title = dict(self.columns).get(self.sort_key, self.sort_key)
        text = Text.assemble(("runs", "bold"), f"  {self.root}/  ·  {len(self.shown)}",
                             f" of {len(self.runs)}" if len(self.shown) != len(self.runs) else "",
                             " run" if len(self.runs) == 1 else " runs", f"  ·  sorted by {title} {arrow}")
        if self.query_text:
            text.append(f"  ·  filter {self.query_text!r}", style="cyan")
        if self.marked:
            text.append(f"  ·  {len(self.marked)} marked (c compares)", style="yellow")
        self.query_one("#runs-title", Static).update(text)

    def highlighted(self):
        table = self.query_one(RunsTable)
        if not self.shown or table.cursor_row is None or not 0 <= table.cursor_row < len(self.shown):
            return None
        return self.shown[table.cursor_row]

    def show_detail(self):
        r = self.highlighted()
        detail = self.query_one("#runs-detail", Static)
        if r is None:
            detail.border_title = ""
            detail.update(Text(f"no runs under {self.root}/ yet: launch one from the picker" if not self.runs
                               else "no run matches the filter; / then clear it", style="dim"))
            return
        detail.border_title = Text(r.run_id or r.name)
        from cockpit.runs.table import fmt_started

        text = Text.assemble(("log ", "dim"), str(r.log), ("  started ", "dim"), fmt_started(r.started))
        if r.error:
            text.append("\nerror ", style="dim")
            text.append(r.error, style="red")
        model = r.config.get("model") if isinstance(r.config, dict) else None
        if isinstance(model, dict) and model:
            text.append("\nmodel ", style="dim")
            text.append("  ".join(f"{k}={v}" for k, v in model.items()))
        detail.update(text)

    @on(DataTable.RowHighlighted, "#runs-table")
    def _highlighted(self, _event):
        self.show_detail()

    @on(DataTable.RowSelected, "#runs-table")
    def _selected(self, _event):
        self.action_open()

    @on(DataTable.HeaderSelected, "#runs-table")
    def _header(self, event: DataTable.HeaderSelected):
        key = event.column_key.value
        if key in dict(self.columns):
            self.reverse = not self.reverse if key == self.sort_key else False
            self.sort_key = key
            self.refill()

    # --- actions -------------------------------------------------------------------------------------
    def action_open(self):
        r = self.highlighted()
        if r is None:
            return
        if r.status in ("empty", "unreadable"):
            self.notify(f"{r.log}: nothing to show ({r.status})", severity="warning", markup=False)
            return
        self.app.open_log(r.log)

    def action_mark(self):
        r = self.highlighted()
        if r is None:
            return
        key = str(r.path)
        self.marked.symmetric_difference_update({key})
        self.query_one(RunsTable).action_cursor_down()
        self.refill()

    def action_compare(self):
        chosen = [r for r in self.runs if str(r.path) in self.marked]
        if len(chosen) < 2:
            self.notify("mark at least two runs with space, then c compares them", severity="warning")
            return
        from cockpit.screens.compare import CompareScreen

        self.app.push_screen(CompareScreen([r.log for r in chosen]))

    def action_resume(self):
        """Continue the highlighted run from its checkpoint, as `cockpit train PRESET --resume RUN_DIR` does: the
        run screen follows it, its earlier segments included."""
        from cockpit.launch import resume_refusal

        r = self.highlighted()
        if r is None:
            return
        why = resume_refusal(r)
        if why is not None:
            self.notify(why, severity="warning", markup=False)
            return
        self.post_message(LaunchRequested(r.preset, [], resume=str(r.path)))

    def action_relaunch(self):
        """A new run of the highlighted run's preset with its config (the overrides that make the preset as it
        loads now into that config), launched as the picker launches one."""
        from cockpit.launch import TENSORBOARD_RUN, relaunch_overrides
        from common.cli import BadInput

        r = self.highlighted()
        if r is None:
            return
        if r.tensorboard:
            self.notify(TENSORBOARD_RUN.format(name=r.run_id or r.name), severity="warning", markup=False)
            return
        if not r.preset or not r.config:
            self.notify(f"{r.run_id or r.name}: its log holds no preset and config to relaunch it with "
                        f"({r.status})", severity="warning", markup=False)
            return
        try:
            overrides, left_out = relaunch_overrides(r.preset, r.config)
        except BadInput as e:
            self.notify(f"cannot relaunch {r.run_id or r.name}: {e}", severity="error", markup=False)
            return
        if left_out:
            self.notify(f"not carried over (preset {r.preset} has no such single value now): "
                        f"{', '.join(left_out)}", severity="warning", markup=False)
        self.post_message(LaunchRequested(r.preset, overrides))

    def action_sort_next(self):
        keys = [k for k, _ in self.columns]
        self.sort_key = keys[(keys.index(self.sort_key) + 1) % len(keys)] if self.sort_key in keys else keys[0]
        self.reverse = False
        self.refill()

    def action_sort_reverse(self):
        self.reverse = not self.reverse
        self.refill()

    def action_filter(self):
        inp = self.query_one("#runs-filter", Input)
        inp.add_class("-shown")
        inp.focus()

    @on(Input.Changed, "#runs-filter")
    def _filter_changed(self, event: Input.Changed):
        if event.value == "/":   # `/` pressed again in the focused, empty filter: it means "filter", not a slash
            event.input.value = ""
            return
        self.query_text = event.value
        self.refill()

    @on(Input.Submitted, "#runs-filter")
    def _filter_done(self, _event):
        self.query_one(RunsTable).focus()

    def action_delete(self):
        r = self.highlighted()
        if r is None:
            return
        from cockpit.screens.confirm import ConfirmScreen

        def answered(yes: bool):
            if not yes:
                return
            from cockpit.runs import RunsError
            from cockpit.runs.delete import delete_run

            try:
                gone = delete_run(r.path, self.root)
            except RunsError as e:
                self.notify(str(e), severity="error", markup=False)
                return
            self.marked.discard(str(r.path))
            self.runs = [x for x in self.runs if x.path != r.path]
            self.refill()
            self.notify(f"deleted {gone}", markup=False)
        self.app.push_screen(ConfirmScreen(
            "delete run", f"Delete {r.path}/ and everything in it (its log, checkpoints, samples)?\n"
                          f"{r.preset} · {r.status} · {r.steps} steps. This cannot be undone."), answered)

    def action_back(self):
        """Esc closes (and clears) the filter first, in it or after it; then it leaves, keeping the view."""
        inp = self.query_one("#runs-filter", Input)
        if inp.has_focus or inp.value:
            inp.value = ""
            inp.remove_class("-shown")
            self.query_one(RunsTable).focus()
            return
        self.app.runs_view = {"root": str(self.root), **{k: getattr(self, k) for k in self.VIEW}}
        self.app.back_to_picker(self)
