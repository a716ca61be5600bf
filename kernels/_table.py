"""Formatting of `kernel` events as a fixed-width table. Pure Python (no torch): `cockpit kernels` and the
kernels panel format rows with it as the benchmark subprocess streams them."""
from __future__ import annotations

import math


def fmt_ms(v) -> str:
    if v is None:
        return "-"
    return f"{v:.3f}" if v < 10 else f"{v:.1f}" if v < 1000 else f"{v:.0f}"


def fmt_bytes(v) -> str:
    if v is None:
        return "-"
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if abs(v) >= scale:
            return f"{v / scale:.1f} {unit}"
    return f"{int(v)} B"


def fmt_err(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, str) or (isinstance(v, float) and not math.isfinite(v)):
        return str(v)
    return f"{v:.1e}"


def fmt_shape(shape) -> str:
    return "x".join(str(s) for s in shape) if shape else "-"


def worst(ev: dict, key: str):
    """Worst of the forward-output and input-gradient errors (`max_abs_err` / `rel_rms_err`)."""
    vals = [ev.get(key), ev.get(f"grad_{key}")]
    vals = [v for v in vals if isinstance(v, (int, float))]
    return max(vals) if vals else None


def interpreted(ev: dict) -> bool:
    """True when the Triton side ran in Triton's CPU interpreter: its timings say nothing of a GPU (the
    interpreter runs each program instance as numpy code), only its correctness and memory count."""
    return ev.get("timing") == "interpreter" or ev.get("backend") == "triton-interpreter"


def _number(v) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def speedup(ev: dict) -> float | None:
    """torch / triton forward+backward time (the event's own `speedup` when it has one); None for interpreter
    runs and where a time is missing."""
    if interpreted(ev):
        return None
    own = _number(ev.get("speedup"))
    if own is not None:
        return own
    t, f = _number(ev.get("torch_ms")), _number(ev.get("triton_ms"))
    return t / f if t and f else None


def mem_saving(ev: dict) -> float | None:
    """1 - triton peak / torch peak (the event's own `mem_saving` when it has one); None where one is missing."""
    own = _number(ev.get("mem_saving"))
    if own is not None:
        return own
    t, f = _number(ev.get("torch_mem")), _number(ev.get("triton_mem"))
    return 1 - f / t if t and f is not None else None


def fmt_speedup(ev: dict) -> str:
    """torch / triton forward+backward time; 'n/a' for interpreter runs, whose timings say nothing of a GPU."""
    if interpreted(ev):
        return "n/a"
    sp = speedup(ev)
    return f"{sp:.2f}x" if sp else "-"


COLUMNS = [  # header, width, cell
    ("kernel", 15, lambda e: e.get("name", "?")),
    ("shape", 17, lambda e: fmt_shape(e.get("shape"))),
    ("dtype", 8, lambda e: e.get("dtype", "-")),
    ("backend", 18, lambda e: e.get("backend", "-")),
    ("ok", 4, lambda e: "ok" if e.get("ok") else "FAIL"),
    ("max abs err", 11, lambda e: fmt_err(worst(e, "max_abs_err"))),
    ("rel rms err", 11, lambda e: fmt_err(worst(e, "rel_rms_err"))),
    ("torch fwd", 9, lambda e: fmt_ms(e.get("torch_fwd_ms"))),
    ("torch f+b", 9, lambda e: fmt_ms(e.get("torch_ms"))),
    ("triton fwd", 10, lambda e: fmt_ms(e.get("triton_fwd_ms"))),
    ("triton f+b", 10, lambda e: fmt_ms(e.get("triton_ms"))),
    ("torch mem", 10, lambda e: fmt_bytes(e.get("torch_mem"))),
    ("triton mem", 10, lambda e: fmt_bytes(e.get("triton_mem"))),
    ("speedup", 8, lambda e: fmt_speedup(e)),
]
COMPILE_COLUMN = ("compile f+b", 11, lambda e: fmt_ms(e.get("compile_ms")))


def columns(with_compile: bool = False) -> list:
    return COLUMNS + [COMPILE_COLUMN] if with_compile else COLUMNS


def header(with_compile: bool = False) -> str:
    cols = columns(with_compile)
    line = "  ".join(h.ljust(w) if i < 4 else h.rjust(w) for i, (h, w, _) in enumerate(cols))
    return line + "\n" + "-" * len(line)


def row(ev: dict, with_compile: bool = False) -> str:
    cells = []
    for i, (_, w, cell) in enumerate(columns(with_compile)):
        text = str(cell(ev))
        cells.append(text.ljust(w) if i < 4 else text.rjust(w))
    line = "  ".join(cells)
    if ev.get("error"):
        line += f"\n    error: {ev['error']}"
    elif not ev.get("ok") and ev.get("worst"):
        line += f"\n    worst tensor: {ev['worst']} (tolerance: rel rms {ev.get('tol_rms')}, max {ev.get('tol_max')})"
    return line


def banner(ev: dict) -> str:
    """One line on how the numbers were taken, from the first event."""
    if ev.get("timing") == "cuda":
        return (f"device: {ev.get('device')}; timing: triton.testing.do_bench (CUDA events, median); "
                f"memory: {ev.get('mem_method')}")
    return (f"device: {ev.get('device')} (TRITON_INTERPRET=1): {ev.get('note', 'interpreter timings')}; "
            f"memory: {ev.get('mem_method')}")


def summary(events: list[dict]) -> str:
    n_ok = sum(1 for e in events if e.get("ok"))
    line = f"{n_ok}/{len(events)} ok"
    fails = [f"{e.get('name')} {fmt_shape(e.get('shape'))} {e.get('dtype')}" for e in events if not e.get("ok")]
    if fails:
        line += "; failed: " + ", ".join(fails)
    if events and interpreted(events[0]):
        line += " (correctness on CPU; interpreter timings, not GPU timings)"
    return line
