"""The loss chart: train and val curves of one run (or several, overlaid, in the comparison view).

Smoothing (EMA) is computed on the full data, then min/max buckets (about two points per column) keep
every spike while a 1,000,000-step run draws as fast as a 1,000-step one. Keys on the screen change the
EMA strength, log-y, the x-axis (step, tokens, wall time) and the markers (checkpoints, evals, lr phase
changes, skipped non-finite steps, GPU throttling, resumes).
"""
from __future__ import annotations

import numpy as np
from rich.text import Text
from textual_plotext import PlotextPlot

from cockpit.series import (
    X_LABELS,
    GrowingArray,
    SmoothCache,
    build_chart,
    drawable,
    nice_ticks,
    series_for_plot,
    tick_label,
)
from cockpit.widgets.chart_markers import MARKERS, marker_steps, one_per_column, place_markers, steps_to_x
from cockpit.widgets.render_cost import RenderCost
from cockpit.widgets.run_pane import set_if_changed
from common.fmt import fmt_count

PALETTE = ("cyan", "orange", "green", "magenta", "blue", "red", "yellow", "white")
# several runs: each run's val points in its own glyph as well as its colour (told apart without colour too)
VAL_GLYPHS = ("•", "+", "x", "*", "o", "%", "#", "@")
SMOOTHING_LEVELS = (0.0, 0.6, 0.8, 0.9, 0.95, 0.99)
X_AXES = ("step", "tokens", "time")
Y_AXIS_ROOM = 12  # columns of a chart that are not its canvas: y tick labels (up to 10 characters) and the frame


def cycle(seq, current):
    """The element after `current` in `seq` (wrapping); the first one when `current` is not in it."""
    seq = tuple(seq)
    try:
        return seq[(seq.index(current) + 1) % len(seq)]
    except ValueError:
        return seq[0]


def run_title(s) -> str:
    """`nanogpt · gpt · 0.81M params · shakespeare.txt (1.1M tokens) · cpu (cpu profile)`; a run that names no
    architecture (a TensorBoard run) is named by its run id instead."""
    parts = [s.preset or "run", s.arch or s.run_id or "?"]
    if s.n_params is not None:
        parts.append(f"{fmt_count(s.n_params)} params")
    tokens = (s.dataset or {}).get("tokens")
    if isinstance(tokens, dict) and all(isinstance(n, int) for n in tokens.values()):
        parts.append(f"{s.dataset.get('name') or 'data'} ({fmt_count(sum(tokens.values()))} tokens)")
    if s.device:
        parts.append(f"{s.device}" + (f" ({s.profile} profile)" if s.profile else ""))
    if s.world_size > 1:
        parts.append(f"{s.world_size} ranks")
    return " · ".join(parts)


class LossPlot(RenderCost, PlotextPlot):
    """`runs`: [(label, RunState)]. One run: train (cyan) + val (orange). Several: a colour per run,
    train as a line and val as points of the run's glyph (VAL_GLYPHS) in the same colour."""

    def __init__(self, *, empty_message: str = "waiting for the first step…", **kwargs):
        super().__init__(**kwargs)
        self.runs: list[tuple[str, object]] = []
        self.smoothing = 0.0
        self.log_y = False
        self.x_axis = "step"
        self.show_markers = True
        self.empty_message = empty_message
        self._caches: dict[tuple, object] = {}
        self.drawn: dict[str, tuple[np.ndarray, np.ndarray]] = {}   # label -> (xs, ys): what was drawn last
        self._markers_key, self._markers = None, {}

    # as a pane of the run screen: one run
    pane, heavy = "loss", True

    @staticmethod
    def signature(s, note=None) -> tuple:
        return (len(s.train), len(s.val), len(s.checkpoints), len(s.skipped_steps), len(s.throttle_steps),
                len(s.resumes), s.out_of_order, s.run_id, s.n_params, s.device, s.profile, s.world_size)

    def update_state(self, s, note: str | None = None):
        self.set_runs([(s.preset or "run", s)])
        set_if_changed(self, "border_title", Text(run_title(s)) if s.run_id else "loss")
        set_if_changed(self, "border_subtitle", self.subtitle())

    def set_runs(self, runs: list[tuple[str, object]]):
        if [id(s) for _, s in runs] != [id(s) for _, s in self.runs]:
            self._caches.clear()
        self.runs = list(runs)
        self.refresh()

    def configure(self, *, smoothing=None, log_y=None, x_axis=None, show_markers=None):
        if smoothing is not None:
            self.smoothing = smoothing
        if log_y is not None:
            self.log_y = log_y
        if x_axis is not None:
            self.x_axis = x_axis
        if show_markers is not None:
            self.show_markers = show_markers
        self.refresh()

    # the screens' view keys: e (EMA strength), t (x-axis), l (log-y), m (markers)
    def next_smoothing(self):
        self.configure(smoothing=cycle(SMOOTHING_LEVELS, self.smoothing))

    def next_x_axis(self):
        self.configure(x_axis=cycle(X_AXES, self.x_axis))

    def toggle_log_y(self):
        self.configure(log_y=not self.log_y)

    def toggle_markers(self):
        self.configure(show_markers=not self.show_markers)

    def subtitle(self) -> str:
        """The legend of a single-run chart (colours, marker letters present) and the view settings, as
        Textual markup for the border subtitle; the chart itself stays free for the curves. Laid out, it
        fits the chart's border: the markers' names give way to their letters alone, then the letters go;
        the view settings (EMA, x-axis, log-y) stay whole."""
        width = self.outer_size.width   # 0 until laid out
        for markers in ("named", "letters", "none"):
            text = self._subtitle(markers)
            if not width or Text.from_markup(text).cell_len <= width - 4:   # Textual's border label: corners
                break                                                       # and a blank each side
        return text

    def _subtitle(self, markers: str) -> str:
        parts = []
        single = len(self.runs) == 1
        if single:
            s = self.runs[0][1]
            parts.append("[cyan]━[/] train" + (f" EMA {self.smoothing:g}" if self.smoothing else "")
                         + (" [orange]━[/] val" if len(s.val) else ""))
            if self.show_markers and markers != "none":
                present = [MARKERS[k][1] + (f" {MARKERS[k][0]}" if markers == "named" else "")
                           for k, v in self.markers(s).items() if v]
                if present:
                    parts.append(" ".join(present))
        elif self.smoothing:
            parts.append(f"EMA {self.smoothing:g}")
        parts.append(f"x: {X_LABELS[self.x_axis]}")
        if self.log_y:
            parts.append("log-y")
        if single and not self.show_markers:
            parts.append("markers off")
        return " · ".join(parts)

    def on_resize(self):
        if self.runs:   # the subtitle fits the new width
            set_if_changed(self, "border_subtitle", self.subtitle())

    # --- drawing -----------------------------------------------------------------------------------
    def _cache(self, key, kind):
        c = self._caches.get(key)
        if c is None:
            c = self._caches[key] = kind()
        return c

    def _series(self, idx: int, kind: str, curve, state, width: int, smoothing: float):
        """Downsampled (xs, ys) of one curve; the list->array conversion and the EMA are incremental."""
        epoch = (state.out_of_order, len(state.resumes))
        x = self._cache((idx, kind, "x", self.x_axis), GrowingArray).get(curve.x(self.x_axis), epoch)
        y = self._cache((idx, kind, "y"), GrowingArray).get(curve.values, epoch)
        smooth = self._cache((idx, kind, "ema"), SmoothCache)
        return series_for_plot(x, y, width, smoothing, self.log_y, smooth, epoch)

    def draw(self, width: int) -> bool:
        """Draw the runs' curves into the plotext figure; False when none has a point to draw. Both train
        and val stay visible where they meet. One run: the val line is drawn before the train line, so a
        cell both pass through shows train (it has a point per step; the val line stays visible on both
        sides of where they meet); with EMA the raw train curve (grey) lies under both. Several runs: every
        train line first, then each run's val points in its glyph (VAL_GLYPHS): a point covers one cell of
        a line that stays readable on both sides. No legend is drawn inside the chart: the screens put it
        outside the plot (subtitle, legend row)."""
        plt = self.plt
        plt.clear_figure()
        self.drawn = {}
        many = len(self.runs) > 1
        buckets = max(8, width)
        under, trains, over = [], [], []     # (drawn key or None, xs, ys, colour, marker), in drawing order
        for i, (label, s) in enumerate(self.runs):
            color = PALETTE[i % len(PALETTE)]
            prefix = f"{label} " if many else ""
            if len(s.train):
                if self.smoothing and not many:
                    xr, yr = self._series(i, "train", s.train, s, buckets, 0.0)
                    under.append((None, xr, yr, "gray", "braille"))
                xs, ys = self._series(i, "train", s.train, s, buckets, self.smoothing)
                trains.append((f"{prefix}train", xs, ys, color, "braille"))
            if len(s.val):
                xs, ys = self._series(i, "val", s.val, s, buckets, 0.0)
                if many:
                    over.append((f"{prefix}val", xs, ys, color, VAL_GLYPHS[i % len(VAL_GLYPHS)]))
                else:
                    under.append(("val", xs, ys, PALETTE[1], "braille"))
        ys_all = []
        layers = [(plt.plot, *c) for c in under + trains] + [(plt.scatter, *c) for c in over]
        for draw, key, xs, ys, color, marker in layers:
            if xs.size:
                draw(xs.tolist(), ys.tolist(), color=color, marker=marker)
                if key is not None:
                    self.drawn[key] = (xs, ys)
                    ys_all.append(ys)
        if not ys_all:
            return False
        xs_all = [xy[0] for xy in self.drawn.values() if xy[0].size]
        lo = min(float(x.min()) for x in xs_all)
        hi = max(float(x.max()) for x in xs_all)
        finite = np.concatenate([y[np.isfinite(y)] for y in ys_all])
        if self.show_markers and not many and finite.size:
            self._draw_markers(self.runs[0][1], float(finite.min()), lo, hi, width)
        if self.log_y:
            plt.yscale("log")
        ticks = nice_ticks(lo, hi, max(3, min(8, width // 10)), integer=self.x_axis != "time")
        if ticks:
            plt.xticks(ticks, [tick_label(t, self.x_axis) for t in ticks])
        plt.xlabel(X_LABELS[self.x_axis])
        return True

    def markers(self, s) -> dict[str, list[int]]:
        """marker_steps(s), computed once per change of what they are made of (the pane's signature): a
        redraw and the subtitle both ask, and on a long run finding the lr phases is not free."""
        key = (id(s), self.signature(s))
        if self._markers_key != key:
            epoch = (s.out_of_order, len(s.resumes))
            steps = self._cache((0, "train", "x", "step"), GrowingArray).get(s.train.steps, epoch)  # as _series
            lrs = self._cache(("markers", "lrs"), GrowingArray).get(s.lrs, epoch)
            self._markers_key, self._markers = key, marker_steps(s, steps, lrs)
        return self._markers

    def _draw_markers(self, s, y_floor: float, lo: float, hi: float, width: int):
        """A rug of letters along the bottom of the chart (C checkpoint, E eval, L lr phase, S skipped,
        T throttle, R resume), at the x of each event (one per character column; where markers of different
        kinds crowd, chart_markers.place_markers spaces them). drawn["marker:KIND"]: the xs they stand for."""
        plt = self.plt
        wanted = {}
        for kind, steps in self.markers(s).items():
            if steps:
                xs = steps_to_x(s.train, steps, self.x_axis)
                wanted[kind] = one_per_column(xs[drawable(xs)], lo, hi, width)
        # the rug's columns: fewer than the canvas has (the y-axis labels and the frame take the rest), so
        # two letters a rug column apart never share a canvas column
        for kind, (marks, at) in place_markers(wanted, lo, hi, max(8, width - Y_AXIS_ROOM)).items():
            if marks.size == 0:
                continue
            _label, char, color = MARKERS[kind]
            plt.scatter(at.tolist(), [y_floor] * int(at.size), marker=char, color=color)
            self.drawn[f"marker:{kind}"] = (marks, np.full(marks.size, y_floor))

    def render(self):
        if not self.runs or not any(len(s.train) or len(s.val) for _, s in self.runs):
            return Text(self.empty_message, style="dim")
        self.rendered()
        if not self.draw(self.size.width):
            return Text("no finite loss values to draw" + (" on a log scale" if self.log_y else ""), style="dim")
        return build_chart(super().render, lambda why: Text(why, style="dim"))
