"""Drawing with characters, shared by the panes: bars in eighth blocks, sparklines, and parts packed into
lines that break only between them."""
from __future__ import annotations

import math

_EIGHTHS = " ▏▎▍▌▋▊▉█"
_SPARK = "▁▂▃▄▅▆▇█"


def hbar(frac: float, width: int) -> str:
    """A horizontal bar `width` cells wide filled to `frac` (0..1) with eighth-block precision."""
    if width <= 0:
        return ""
    if frac is None or not math.isfinite(frac):
        frac = 0.0
    frac = min(max(frac, 0.0), 1.0)
    eighths = int(round(frac * width * 8))
    full, rem = divmod(eighths, 8)
    s = "█" * full + (_EIGHTHS[rem] if rem and full < width else "")
    return s.ljust(width)


def sparkline(values, width: int, lo: float | None = None, hi: float | None = None) -> str:
    """The last `width` values as ▁..█ (None/NaN as a space); scale lo..hi (default: the values' range)."""
    vals = list(values)[-width:] if width > 0 else []
    finite = [v for v in vals if v is not None and math.isfinite(v)]
    if not finite:
        return " " * len(vals)
    lo = min(finite) if lo is None else lo
    hi = max(finite) if hi is None else hi
    span = hi - lo
    out = []
    for v in vals:
        if v is None or not math.isfinite(v):
            out.append(" ")
        else:
            k = 0 if span <= 0 else int((min(max(v, lo), hi) - lo) / span * (len(_SPARK) - 1) + 0.5)
            out.append(_SPARK[k])
    return "".join(out)


def pack_words(parts: list[str], width: int, sep: str = " ") -> list[str]:
    """Join `parts` with `sep` into lines of at most `width` columns, breaking only between parts (a part
    longer than the width gets a line of its own)."""
    lines: list[str] = []
    for p in parts:
        if lines and len(lines[-1]) + len(sep) + len(p) <= width:
            lines[-1] += sep + p
        else:
            lines.append(p)
    return lines or [""]
