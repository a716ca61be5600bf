"""One metric as a small braille line chart: its name and latest value in the border, its range in a gutter.

The metrics grid holds one per metric; `z` (or Enter) on a focused one opens it full screen with an x axis.
"""
from __future__ import annotations

import numpy as np
from rich.text import Text
from textual.widget import Widget

from cockpit.metrics import SHORT, Series, fmt_value, short_number
from cockpit.series import downsample_minmax, nice_ticks
from cockpit.widgets.braille import braille_rows, value_range
from cockpit.widgets.render_cost import RenderCost
from cockpit.widgets.run_pane import set_if_changed

LINE_STYLE = "cyan"
FLOOR_PERCENTILE = {"throughput": 5.0}   # the first step's warm-up is slow: it must not flatten the rest


class MetricChart(RenderCost, Widget, can_focus=True):
    DEFAULT_CSS = """
    MetricChart { height: 1fr; width: 1fr; border: round $secondary; padding: 0 0; }
    MetricChart:focus { border: round $accent; }
    """

    def __init__(self, key: str, *, x_axis: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.key = key
        self.series: Series | None = None
        self.x_range: tuple[float, float] | None = None
        self.x_axis = x_axis         # a row of step ticks under the chart (the enlarged view)
        self.log_y = False

    def show(self, series: Series | None, x_range: tuple[float, float] | None = None):
        self.series, self.x_range = series, x_range
        self._title()
        self.refresh()

    def on_resize(self, _event):
        self._title()

    def _title(self):
        """`name value` in the border; a shorter name where the cell is too narrow for it."""
        s = self.series
        if s is None:
            return
        value = fmt_value(s.last(), s.key, s.unit)
        title = f"{s.title} {value}"
        room = self.outer_size.width - 5   # the border's corners and the spaces around the title
        if room > 0 and len(title) > room and s.key in SHORT:
            title = f"{SHORT[s.key]} {value}"
        set_if_changed(self, "border_title", Text(title))

    def render(self):
        s = self.series
        w, h = self.size.width, self.size.height
        if s is None or w <= 0 or h <= 0:
            return Text("no values yet", style="dim")
        self.rendered()
        ys = np.asarray(s.values, dtype=np.float64)
        xs = np.asarray(s.steps, dtype=np.float64)[: ys.size]
        yr = value_range(ys, self.log_y, FLOOR_PERCENTILE.get(s.key, 0.0))
        if yr is None:
            return Text("no finite values" + (" above 0 (log-y)" if self.log_y else ""), style="dim")
        hi_label, lo_label = short_number(yr[1]), short_number(yr[0])
        gutter = max(len(hi_label), len(lo_label)) + 1 if h >= 2 and w >= 16 else 0
        rows_h = h - 1 if (self.x_axis and h >= 4) or h >= 10 else h   # a tall chart (z) gets step ticks
        plot_w = max(1, w - gutter)
        xs, ys = downsample_minmax(xs, ys, plot_w)
        rows = braille_rows(xs, ys, plot_w, rows_h, self.x_range, yr, self.log_y)
        out = Text(no_wrap=True, overflow="crop")
        for i, row in enumerate(rows):
            if gutter:
                label = hi_label if i == 0 else lo_label if i == rows_h - 1 else ""
                out.append(label.rjust(gutter - 1) + " ", style="dim")
            out.append(row, style=LINE_STYLE)
            if i < len(rows) - 1 or rows_h < h:
                out.append("\n")
        if rows_h < h:
            out.append(self._x_ticks(plot_w, gutter), style="dim")
        return out

    def _x_ticks(self, plot_w: int, gutter: int) -> str:
        """Step labels under the plot at round steps, each centred on its column."""
        lo, hi = self.x_range if self.x_range else (float(min(self.series.steps)), float(max(self.series.steps)))
        line = [" "] * (gutter + plot_w)
        if hi <= lo:
            return "".join(line)
        for t in nice_ticks(lo, hi, max(2, plot_w // 12), integer=True):
            label = f"{t:.0f}"
            col = gutter + round((t - lo) / (hi - lo) * (plot_w - 1)) - len(label) // 2
            col = min(max(gutter, col), gutter + plot_w - len(label))
            if all(c == " " for c in line[max(0, col - 1):col + len(label) + 1]):
                line[col:col + len(label)] = label
        return "".join(line)
