"""The metrics grid: a small chart per metric the run produces (learning rate, grad norm, throughput, then
every eval metric: accuracy, balance loss, dropped tokens, zero weights ...), as many as fit.

Cells share the x axis (the run's steps) so a spike reads across the grid. The grid lays itself out from its
size: a column per MIN_CELL_W characters, a row per CELL_H lines; metrics that do not fit are counted under
the last chart (`g` chooses which are shown, `z` enlarges the focused one). Its charts are braille drawn with numpy
(widgets/braille.py), about 0.4 ms each; beside a CPU trainer they are paced with the loss chart (a heavy
pane: the screen redraws them together, at most 2 s apart), so the grid and the chart always agree.
"""
from __future__ import annotations

from textual.containers import Grid
from textual.widgets import Static

from cockpit.metrics import run_series
from cockpit.widgets.metric_chart import MetricChart
from cockpit.widgets.run_pane import set_if_changed

MIN_CELL_W = 26   # characters: a gutter of 6 and a plot of about 18 columns
CELL_H = 6        # lines: the border's 2 and 4 rows of 4 dots each
WAITING = ("lr, grad norm and throughput appear with the first logged step; eval metrics (accuracy, balance "
           "loss …) with each eval")


def grid_shape(n: int, width: int, height: int) -> tuple[int, int]:
    """(columns, rows) of the cells for n metrics in width×height characters."""
    if n <= 0:
        return 1, 1
    cols = max(1, min(n, width // MIN_CELL_W))
    rows = max(1, min(-(-n // cols), height // CELL_H))
    return cols, rows


class MetricsGrid(Grid):
    DEFAULT_CSS = """
    MetricsGrid { grid-gutter: 0 0; height: 1fr; }
    MetricsGrid > #metrics-empty { color: $text-muted; padding: 0 1; column-span: 1; }
    """
    pane, heavy = "metrics", True

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.state = None
        self.hidden: set[str] = set()      # metrics the user chose not to show (g)
        self.available: list[tuple[str, str]] = []   # (key, title) of every metric the run has, in order
        self.charts: dict[str, MetricChart] = {}
        self.shown: list[str] = []
        self.more_note = ""                # "+3 more · g": metrics that did not fit, under the last chart

    @staticmethod
    def signature(s, note=None) -> tuple:
        return (len(s.train), s.step, s.run_id, tuple(len(c) for c in s.metrics.values()))

    def compose(self):
        yield Static(WAITING, id="metrics-empty")

    def update_state(self, s, note: str | None = None):
        self.state = s
        self._layout()

    def on_resize(self, event):
        self._layout()

    def set_hidden(self, hidden: set[str]):
        self.hidden = set(hidden)
        self._layout()

    def _layout(self):
        s = self.state
        if s is None:
            return
        series = run_series(s)
        self.available = [(x.key, x.title) for x in series]
        wanted = [x for x in series if x.key not in self.hidden]
        for x in wanted:
            if x.key not in self.charts:
                chart = MetricChart(x.key, id=f"metric-{len(self.charts)}")
                self.charts[x.key] = chart
                self.mount(chart)
        big = self.screen.maximized if self.is_attached else None
        if big is not None and big in self.charts.values():
            # one chart fills the screen (z): the grid is not laid out now, only that chart follows the run
            by_key = {x.key: x for x in series}
            if big.key in by_key:
                big.show(by_key[big.key], _x_range(s))
            return
        self._order([x.key for x in wanted])
        empty = self.query_one("#metrics-empty", Static)
        empty.display = not wanted
        if not wanted:
            empty.update("every metric is hidden: g chooses which are shown" if series else WAITING)
        w, h = self.content_size.width, self.content_size.height
        cols, rows = grid_shape(len(wanted), w, h)
        self.styles.grid_size_columns = cols
        self.styles.grid_size_rows = rows
        fits = cols * rows
        self.shown = [x.key for x in wanted[:fits]]
        x_range = _x_range(s)
        by_key = {x.key: x for x in wanted}
        for key, chart in self.charts.items():
            visible = key in self.shown
            chart.display = visible
            if visible:
                chart.show(by_key[key], x_range)
        more = len(series) - len(self.shown)
        self.more_note = f"+{more} more · g" if more > 0 else ""
        for key, chart in self.charts.items():  # the grid has no border: the last chart shown carries the note
            set_if_changed(chart, "border_subtitle", self.more_note if self.shown and key == self.shown[-1] else "")

    def _order(self, keys: list[str]):
        """The grid places its children in DOM order: keep the charts in the series' order (a metric that
        appears later, an accuracy at the first eval, may belong before charts mounted earlier)."""
        charts = [self.charts[k] for k in keys if k in self.charts]
        if not charts or not all(c.is_attached for c in charts):
            return
        current = [c for c in self.children if isinstance(c, MetricChart) and c in charts]
        if current == charts:
            return
        if charts[0] is not current[0]:
            self.move_child(charts[0], before=current[0])
        for previous, chart in zip(charts, charts[1:]):
            self.move_child(chart, after=previous)

    @property
    def render_seconds(self) -> float | None:
        """What one redraw of the shown charts costs together (None until one was measured)."""
        costs = [c.render_seconds for c in self.charts.values() if c.display and c.render_seconds is not None]
        return sum(costs) if costs else None

    def chart(self, key: str) -> MetricChart | None:
        return self.charts.get(key)


def _x_range(s) -> tuple[float, float] | None:
    """The run's steps from its first point to the latest step reported: every cell on the same axis."""
    firsts = [c.steps[0] for c in (s.train, *s.metrics.values()) if len(c.steps)]
    if not firsts:
        return None
    lo, hi = float(min(firsts)), float(max(s.step, *(c.steps[-1] for c in (s.train, *s.metrics.values())
                                                      if len(c.steps))))
    return (lo, hi) if hi > lo else (lo - 1, hi + 1)
