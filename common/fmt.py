"""Formatting for people: bytes, counts, rates, durations, and text that is safe to print."""
from __future__ import annotations

import math
import re

_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def _picture(m: re.Match) -> str:
    c = ord(m.group())
    return chr(0x2400 + c) if c < 0x20 else "\u2421" if c == 0x7F else "\ufffd"


def printable(text: str) -> str:
    """`text` with its control characters (terminal escapes, bells, carriage returns; not newlines or tabs)
    shown as symbols (␛, ␇, ␍ ...) instead of acting on the terminal."""
    return _CONTROL.sub(_picture, text) if _CONTROL.search(text) else text


# beyond these a number is written in scientific notation: a log's absurd values (1e308) stay one short word
HUGE = 1e15
HUGE_SECONDS = 1e9     # about 31 years


def fmt_bytes(n) -> str:
    if n is None:
        return "-"
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            if unit == "B":
                return f"{n:.0f} {unit}"
            return f"{n:.1f} {unit}" if abs(n) < HUGE else f"{n:.3g} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def fmt_count(n) -> str:
    if n is None:
        return "-"
    n = float(n)
    if abs(n) >= HUGE:
        return f"{n:.3g}"
    for unit, div in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.2f}{unit}"
    return f"{n:.0f}"


def fmt_rate(x) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    if abs(x) >= HUGE:
        return f"{x:.3g}"
    for unit, div in (("M", 1e6), ("k", 1e3)):
        if abs(x) >= div:
            return f"{x / div:.1f}{unit}"
    return f"{x:.1f}"


def fmt_duration(seconds) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "--:--"
    if abs(seconds) >= HUGE_SECONDS:
        return f"{seconds:.3g} s"
    sign, seconds = "-" if seconds < 0 else "", int(round(abs(seconds)))  # a clock set back: negative
    sign = sign if seconds else ""
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return sign + (f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}")


def fmt_loss(x) -> str:
    if x is None:
        return "-"
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    return f"{x:.4f}" if abs(x) < HUGE else f"{x:.4g}"
