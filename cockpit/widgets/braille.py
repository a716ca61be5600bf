"""A line chart in braille characters, drawn with numpy: the metrics grid's small charts.

Each character cell holds 2×4 dots (Unicode braille, U+2800 + an 8-bit dot mask), so a w×h cell area is a
2w×4h pixel canvas. The points (already min/max-bucketed to about two per column by cockpit/series.py) are
joined by straight segments, every segment sampled at one point per pixel it crosses, all in a few array
operations: a grid of a dozen charts redraws in about a millisecond each, where a plotext chart costs ten.
"""
from __future__ import annotations

import numpy as np

# bit of each dot: DOT_BITS[row][col] within a cell (rows top to bottom, cols left to right)
DOT_BITS = np.array([[0x01, 0x08], [0x02, 0x10], [0x04, 0x20], [0x40, 0x80]], dtype=np.uint8)
BLANK = 0x2800


def value_range(ys: np.ndarray, log_y: bool = False, floor_percentile: float = 0.0) -> tuple[float, float] | None:
    """(lo, hi) of the finite values (positive ones on a log scale), widened when flat; None when none.
    floor_percentile > 0 raises lo to that percentile (the first steps' slow warm-up throughput would
    otherwise flatten the rest; points below are drawn on the bottom row)."""
    ys = ys[np.isfinite(ys)]
    if log_y:
        ys = ys[ys > 0]
    if ys.size == 0:
        return None
    lo, hi = float(ys.min()), float(ys.max())
    if floor_percentile > 0 and ys.size >= 10:
        lo = float(np.percentile(ys, floor_percentile))
    if hi - lo <= abs(hi) * 1e-12 or not np.isfinite(hi - lo):
        pad = abs(hi) * 0.05 or 1.0
        lo, hi = lo - pad, hi + pad
    return lo, hi


def braille_rows(xs, ys, width: int, height: int, x_range: tuple[float, float] | None = None,
                 y_range: tuple[float, float] | None = None, log_y: bool = False) -> list[str]:
    """`height` strings of `width` characters drawing the line through (xs, ys); blank rows when there is
    nothing finite to draw. x_range/y_range: the axes' ends (default: the data's)."""
    blank = [" " * max(width, 0)] * max(height, 0)
    if width <= 0 or height <= 0:
        return blank
    xs = np.asarray(xs, dtype=np.float64)
    ys = np.asarray(ys, dtype=np.float64)
    n = min(xs.size, ys.size)
    xs, ys = xs[:n], ys[:n]
    ok = np.isfinite(xs) & np.isfinite(ys)
    if log_y:
        ok &= ys > 0
    xs, ys = xs[ok], ys[ok]
    if xs.size == 0:
        return blank
    if log_y:
        ys = np.log10(ys)
        if y_range is not None:
            y_range = (np.log10(max(y_range[0], 1e-300)), np.log10(max(y_range[1], 1e-300)))
    x0, x1 = x_range if x_range is not None else (float(xs.min()), float(xs.max()))
    y0, y1 = y_range if y_range is not None else (float(ys.min()), float(ys.max()))
    pw, ph = 2 * width, 4 * height
    with np.errstate(all="ignore"):
        px = (xs - x0) / (x1 - x0) * (pw - 1) if x1 > x0 else np.full(xs.size, (pw - 1) / 2)
        py = (y1 - ys) / (y1 - y0) * (ph - 1) if y1 > y0 else np.full(ys.size, (ph - 1) / 2)
    px = np.clip(np.nan_to_num(px, nan=0.0), 0, pw - 1)
    py = np.clip(np.nan_to_num(py, nan=ph - 1.0), 0, ph - 1)
    if px.size > 1:  # join neighbours: each segment sampled once per pixel it spans
        dx, dy = np.diff(px), np.diff(py)
        k = np.maximum(np.ceil(np.maximum(np.abs(dx), np.abs(dy))), 1).astype(np.int64)
        seg = np.repeat(np.arange(k.size), k)
        frac = (np.arange(seg.size) - np.repeat(np.cumsum(k) - k, k)) / np.repeat(k, k)
        px = np.concatenate([px[:-1][seg] + dx[seg] * frac, px[-1:]])
        py = np.concatenate([py[:-1][seg] + dy[seg] * frac, py[-1:]])
    ix = np.rint(px).astype(np.int64)
    iy = np.rint(py).astype(np.int64)
    cells = np.zeros((height, width), dtype=np.uint8)
    np.bitwise_or.at(cells, (iy // 4, ix // 2), DOT_BITS[iy % 4, ix % 2])
    rows = []
    for row in cells:
        codes = row.astype(np.int64) + BLANK
        codes[row == 0] = 0x20
        rows.append("".join(map(chr, codes.tolist())))
    return rows
