"""The comparison view: the marked runs' train and val curves overlaid on one chart (a colour and a val
glyph per run), x-axis by step, tokens or wall time, the same smoothing for all; under it the legend (each
run's preset and run id in full, wrapped between runs, never over the curves) and one table per
cockpit/compare.py: best val loss, tokens/s, peak memory and every config key that differs, its columns
fitted to the screen's width. Live runs keep growing here too (each log is tailed like the run screen's)."""
from __future__ import annotations

from rich.markup import escape
from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.widgets import DataTable, Footer, Static

from cockpit.messages import RunsLoaded
from cockpit.screens.base import ChartKeys, CockpitScreen
from cockpit.screens.pacing import TICK_S
from cockpit.widgets.loss_plot import PALETTE, VAL_GLYPHS, LossPlot

# plotext colour names -> Rich colour names for the legend
RICH_COLOR = {"orange": "dark_orange", "gray": "grey50"}


def rich_color(run: int) -> str:
    """The Rich colour of run number `run`'s curves."""
    color = PALETTE[run % len(PALETTE)]
    return RICH_COLOR.get(color, color)


class CompareScreen(ChartKeys, CockpitScreen):
    HELP_TITLE = "run comparison"
    BINDINGS = [
        Binding("question_mark", "help", "Help", key_display="?"),  # first: the footer may be cut
        Binding("t", "x_axis", "X-axis"),
        Binding("e", "smoothing", "EMA"),
        Binding("l", "log_y", "Log-y"),
        Binding("escape", "back", "Back"),
        Binding("q", "quit", "Quit"),
    ]

    def __init__(self, logs: list, refresh: bool = True):
        super().__init__()
        self.logs = [str(p) for p in logs]
        self.sources = []
        self.states = []
        self.labels: list[str] = []
        self.loaded = False
        self.refresh_live = refresh
        self._versions = None

    def compose(self) -> ComposeResult:
        with Vertical(id="compare"):
            yield LossPlot(id="compare-plot", empty_message="loading the runs…")
            yield Static("", id="compare-legend")
            yield DataTable(cursor_type="row", zebra_stripes=True, id="compare-table")
        yield Footer(show_command_palette=False)

    def on_mount(self):
        self.query_one("#compare-plot").border_title = f"loss · {len(self.logs)} runs"
        self.query_one("#compare-table").border_title = "differences"
        self.load()

    @work(thread=True, exclusive=True, group="compare-load")
    def load(self):
        from cockpit.trainer_proc import open_source
        from common.state import fold_available

        loaded = []
        try:
            for path in self.logs:
                src = open_source(path)
                loaded.append((src, fold_available(src.poll)))
        except Exception as e:  # noqa: BLE001
            self.post_message(RunsLoaded(loaded, f"{type(e).__name__}: {e}"))
            return
        self.post_message(RunsLoaded(loaded))

    def on_runs_loaded(self, msg: RunsLoaded):
        from cockpit.compare import unique_labels
        from common.state import settle

        if msg.error:
            self.notify(f"reading a log failed: {msg.error}", severity="error", markup=False)
        self.sources = [src for src, _ in msg.runs]
        self.states = [st for _, st in msg.runs]
        for src, s in msg.runs:
            if not src.ends_itself:
                settle(s)
        self.labels = unique_labels(self.states, [str(src.path) for src in self.sources])
        self.loaded = True
        self.redraw()
        if self.refresh_live and any(s.end is None and s.status != "killed" for s in self.states):
            self.set_interval(TICK_S * 4, self.tick)

    def tick(self):
        for src, s in zip(self.sources, self.states):
            if s.end is None and s.status != "killed":
                s.apply_all(src.poll())
        self.redraw()

    def redraw(self):
        versions = tuple(s.version for s in self.states)
        if versions == self._versions:
            return
        self._versions = versions
        plot = self.query_one(LossPlot)
        plot.set_runs(list(zip(self.labels, self.states)))
        plot.border_subtitle = plot.subtitle()
        self.fit_to_width()

    def on_resize(self):
        if self.loaded:
            self.fit_to_width()

    def fit_to_width(self):
        """The legend and the table, laid out for the screen's width."""
        self.query_one("#compare-legend", Static).update(self.legend(self.size.width - 2))
        self.fill_table()

    def legend(self, width: int) -> Text:
        """One entry per run: its colour's line, its val glyph and its label in full; entries wrap between
        runs, never inside a label that fits the width."""
        entries = []
        for i, label in enumerate(self.labels):
            entry = Text(f"━━ {VAL_GLYPHS[i % len(VAL_GLYPHS)]} ", style=rich_color(i))
            entry.append(label, style="bold")
            entries.append(entry)
        entries.append(Text("(train: line · val: glyph)", style="dim"))
        text, used, sep = Text(), 0, "   "
        for entry in entries:
            if used and used + len(sep) + entry.cell_len > width:
                text.append("\n")
                used = 0
            elif used:
                text.append(sep)
                used += len(sep)
            text.append_text(entry)
            used += entry.cell_len
        return text

    def fill_table(self):
        from cockpit.compare import compare_rows, fit_rows, memory_notes

        rows = compare_rows(self.states, [str(src.path) for src in self.sources])
        table = self.query_one("#compare-table", DataTable)
        room = self.size.width - table.styles.gutter.width - table.styles.scrollbar_size_vertical
        widths, rows = fit_rows(rows, room, padding=2 * table.cell_padding)
        table.clear(columns=True)
        for i, (title, width) in enumerate(zip(rows[0], widths)):
            table.add_column(Text(title, style=f"bold {rich_color(i - 1)}" if i else ""), width=width, key=f"c{i}")
        for r in rows[1:]:
            table.add_row(Text(r[0], style="bold"), *map(escape, r[1:]))
        notes = memory_notes(self.states)
        table.border_subtitle = notes[0] if notes else ""

    def action_back(self):
        self.app.pop_screen()
