"""Plot data: EMA smoothing over the full data, then min/max-per-bucket downsampling that keeps spikes.

A 1,000,000-point curve is reduced to ~2 points per terminal column (each bucket's min and max, in the
order they occur), so drawing costs the same for any run length and no spike disappears. A live run redraws
its chart every few seconds: GrowingArray and SmoothCache extend the converted and the smoothed series by the
new points only, with the same numbers as converting and smoothing the whole series again. The x-axis ticks
(round numbers, labelled per axis) are shared by the TUI's chart and the text reports.
"""
from __future__ import annotations

import math

import numpy as np

from common.fmt import fmt_duration

# plotext computes its axes in floats that overflow near the ends of the float range: a value beyond
# PLOT_LIMIT (a loss of 1e308 from a run that diverged) is off the chart, like an infinity, and never drawn;
# one closer to zero than 1 / PLOT_LIMIT (a subnormal float) is drawn at zero
PLOT_LIMIT = 1e300


def drawable(v: np.ndarray) -> np.ndarray:
    """Which values a chart can draw: finite, within ±PLOT_LIMIT."""
    return np.abs(v) <= PLOT_LIMIT


def flush_tiny(v: np.ndarray) -> np.ndarray:
    """v with values closer to zero than 1 / PLOT_LIMIT as zero (a copy only when there are any)."""
    tiny = (np.abs(v) < 1.0 / PLOT_LIMIT) & (v != 0.0)
    return np.where(tiny, 0.0, v) if tiny.any() else v


def ema_extend(values, strength: float, acc: float = 0.0, weight: float = 0.0):
    """The debiased EMA recurrence (TensorBoard's smoothing) over `values` (Python floats), carried on from
    the running (acc, weight) of the points before them. Returns (smoothed values, acc, weight).
    A NaN or inf passes through unsmoothed and the average carries on past it."""
    a = float(min(strength, 0.999))
    out = []
    append = out.append
    # A plain loop over Python floats: ~0.2 s for 1e6 points, and exact.
    for v in values:
        if v - v != 0.0:       # NaN or inf (a cheaper test than math.isfinite in this loop)
            append(v)
            continue
        acc = a * acc + (1 - a) * v
        weight = a * weight + (1 - a)
        append(acc / weight)
    return out, acc, weight


def ema(values, strength: float) -> np.ndarray:
    """Debiased exponential moving average of a whole series: strength in [0, 1), 0 = raw."""
    y = np.asarray(values, dtype=np.float64)
    if strength <= 0 or y.size == 0:
        return y
    return np.asarray(ema_extend(y.tolist(), strength)[0], dtype=np.float64)


def _with_room(buf: np.ndarray, keep: int, n: int) -> np.ndarray:
    """`buf` with room for n values and its first `keep` kept; capacity doubles, so appending k points to a
    growing series costs O(k) amortised."""
    if n <= buf.size:
        return buf
    grown = np.empty(max(n, 2 * buf.size, 1024))
    grown[:keep] = buf[:keep]
    return grown


class GrowingArray:
    """A float64 numpy view of a growing Python list, extended in place: a redraw after k new points
    converts k values, not all n. `epoch` must change when earlier entries may have changed (a resumed run
    replacing points: RunState.out_of_order, len(RunState.resumes))."""

    def __init__(self):
        self.buf = np.empty(0)
        self.n = 0
        self.epoch = None

    def get(self, values, epoch=None) -> np.ndarray:
        n = len(values)
        if epoch != self.epoch or n < self.n:
            self.n, self.epoch = 0, epoch
        if n > self.n:
            self.buf = _with_room(self.buf, self.n, n)
            self.buf[self.n:n] = np.fromiter(values[self.n:n], dtype=np.float64, count=n - self.n)
            self.n = n
        return self.buf[:n]


class SmoothCache:
    """The EMA of a growing series, extended incrementally by ema_extend: the same numbers as `ema`, but a
    redraw after k new points costs O(k), not O(n). A series that shrank or changed is recomputed."""

    def __init__(self):
        self.strength = None
        self.n = 0
        self.acc = 0.0
        self.weight = 0.0
        self.buf = np.empty(0)
        self.last = None
        self.epoch = None

    def get(self, values, strength: float, epoch=None) -> np.ndarray:
        """`values`: a list or 1-D array; `epoch` changes whenever earlier points may have been replaced."""
        n = len(values)
        if strength <= 0:
            return np.asarray(values, dtype=np.float64)
        tail_same = self.n and n >= self.n and self.last == values[self.n - 1] and epoch == self.epoch
        if strength != self.strength or not tail_same:
            self.strength, self.n, self.acc, self.weight = strength, 0, 0.0, 0.0
            self.epoch = epoch
        if n > self.n:
            new = values[self.n:n]
            new = new.tolist() if isinstance(new, np.ndarray) else new
            smoothed, self.acc, self.weight = ema_extend(new, strength, self.acc, self.weight)
            self.buf = _with_room(self.buf, self.n, n)
            self.buf[self.n:n] = smoothed
            self.n = n
            self.last = values[n - 1]
        return self.buf[:n]


def downsample_minmax(x, y, buckets: int) -> tuple[np.ndarray, np.ndarray]:
    """Keep each bucket's min and max point (in x order). Returns at most 2*buckets points.

    Buckets are equal runs of ceil(n / buckets) points (the last one shorter), so the per-bucket argmin and
    argmax are one reshape and two reductions: ~25 ms for 1e6 points. Points that cannot be drawn (NaN, inf,
    beyond PLOT_LIMIT in x or y) never are (a bucket of only those contributes nothing); a drawable spike is
    always its bucket's max (or min)."""
    x = flush_tiny(np.asarray(x, dtype=np.float64))
    y = flush_tiny(np.asarray(y, dtype=np.float64))
    n = y.size
    finite = drawable(y) & drawable(x)
    if n <= 2 * buckets or buckets <= 0:
        return (x, y) if finite.all() else (x[finite], y[finite])
    k = -(-n // buckets)          # points per bucket
    nb = -(-n // k)               # buckets actually used (<= buckets)
    pad = nb * k - n
    lo = np.where(finite, y, np.inf)
    hi = np.where(finite, y, -np.inf)
    if pad:
        lo = np.concatenate([lo, np.full(pad, np.inf)])
        hi = np.concatenate([hi, np.full(pad, -np.inf)])
    base = np.arange(nb) * k
    imin = lo.reshape(nb, k).argmin(axis=1) + base
    imax = hi.reshape(nb, k).argmax(axis=1) + base
    keep = np.unique(np.concatenate([imin, imax]))
    keep = keep[keep < n]
    keep = keep[finite[keep]]
    return x[keep], y[keep]


def build_chart(build, fallback):
    """build() (plotext drawing the chart), or fallback(why) when plotext's arithmetic fails on values it
    cannot lay out (its tick computation overflows on some extreme ranges): a chart never takes its screen
    or report down."""
    try:
        return build()
    except (ArithmeticError, ValueError, IndexError) as e:
        return fallback(f"(the chart cannot draw these values: {type(e).__name__})")


def series_for_plot(x, y, width: int, smoothing: float = 0.0, log_y: bool = False,
                    cache: SmoothCache | None = None, epoch=None):
    """(xs, ys) ready to draw: EMA on the full data, then min/max buckets (2 per column) keep spikes;
    non-positive values are dropped for log-y. x and y: lists or arrays (GrowingArray views avoid
    re-converting a long list on every redraw); `cache` smooths incrementally (a live chart)."""
    ys = cache.get(y, smoothing, epoch) if cache is not None else ema(y, smoothing)
    xs = np.asarray(x, dtype=np.float64)
    if xs.size != ys.size:
        m = min(xs.size, ys.size)
        xs, ys = xs[:m], ys[:m]
    if log_y:
        ok = ys >= 1.0 / PLOT_LIMIT
        xs, ys = xs[ok], ys[ok]
    return downsample_minmax(xs, ys, width)


def plot_series(x, y, smoothing: float = 0.0, buckets: int = 200, log_y: bool = False):
    """series_for_plot of a whole finished series into `buckets` columns (the text reports)."""
    return series_for_plot(x, y, buckets, smoothing, log_y)


X_LABELS = {"step": "step", "tokens": "tokens", "time": "seconds"}   # x_axis -> the axis' title


def nice_ticks(lo: float, hi: float, n: int = 5, integer: bool = False) -> list[float]:
    """About n round tick values (1, 2, 2.5 or 5 times a power of ten) covering [lo, hi]; `integer` keeps
    them whole numbers (steps, tokens)."""
    if not (math.isfinite(lo) and math.isfinite(hi) and math.isfinite(hi - lo)) or n < 2:
        return []
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / (n - 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10, 20)
                if m * mag >= raw * 0.7 and (not integer or float(m * mag).is_integer()))
    first = math.ceil(lo / step - 1e-9) * step
    # counted, not stepped until past hi: near 1e18 a step can be smaller than the floats' spacing
    count = min(2 * n, math.floor((hi - first) / step + 1e-9) + 1)
    return [round(first + i * step, 12) for i in range(max(0, count))]


def tick_label(x: float, axis: str) -> str:
    """Short tick text: 1500 -> '1500' (steps), 51200 -> '51.2k' (tokens), 90 -> '1:30' (seconds)."""
    if axis == "time":
        return fmt_duration(x)
    if axis == "tokens":
        for unit, div in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
            if abs(x) >= div:
                return f"{x / div:.4g}{unit}"
    return f"{x:.0f}" if float(x).is_integer() else f"{x:g}"


def end_ticks(lo: float, hi: float, n: int = 5, integer: bool = False) -> list[float]:
    """nice_ticks over [lo, hi] whose last tick is hi itself: a text report marks where the longest run
    ended. A round tick closer to hi than half the ticks' spacing gives way to it (their labels would
    touch)."""
    ticks = nice_ticks(lo, hi, n, integer)
    if len(ticks) < 2:
        return ticks
    spacing = ticks[1] - ticks[0]
    return [t for t in ticks if hi - t >= 0.5 * spacing] + [hi]
