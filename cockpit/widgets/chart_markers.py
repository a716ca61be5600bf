"""Markers on the loss chart: where checkpoints, evals, learning-rate phase changes, skipped non-finite
steps, GPU throttling and resumes happened, from a RunState, and where they sit on the chosen x-axis."""
from __future__ import annotations

import numpy as np

MARKERS = {  # kind -> (legend label, character, colour)
    "checkpoint": ("checkpoint", "C", "green"),
    "eval": ("eval", "E", "orange"),
    "lr": ("lr phase", "L", "magenta"),
    "skipped": ("skipped step", "S", "red"),
    "throttle": ("GPU throttle", "T", "red"),
    "resume": ("resume", "R", "cyan"),
}
# Who keeps its column where markers crowd: the rare events first, the rug of evals last.
PRIORITY = ("resume", "skipped", "throttle", "lr", "checkpoint", "eval")
MAX_SHIFT = 2  # columns a crowded marker may move; farther, it would mark another step, so it is left out


def lr_phase_changes(steps, lrs, rel_tol: float = 1e-6) -> list[tuple[int, str]]:
    """Steps where the learning-rate schedule changes direction: warm-up end, decay end, restarts.
    Returns (step, label) with label in {'warm-up end', 'decay end', 'lr up', 'lr down', 'lr flat'}."""
    n = min(len(steps), len(lrs))
    if n < 3:
        return []
    st = np.asarray(steps[-n:], dtype=np.float64)  # exact below 2**53; near int64 max a cast would overflow
    lr = np.asarray(lrs[-n:], dtype=np.float64)  # a missing lr (None) becomes NaN
    ok = np.isfinite(lr)
    st, lr = st[ok], lr[ok]
    if lr.size < 3:
        return []
    d = np.diff(lr)
    tol = rel_tol * max(float(np.max(np.abs(lr))), 1e-30)
    sign = np.where(d > tol, 1, np.where(d < -tol, -1, 0))
    change = np.nonzero(sign[1:] != sign[:-1])[0] + 1
    out = []
    for i in change.tolist():
        prev, cur = int(sign[i - 1]), int(sign[i])
        if prev == 1 and cur in (-1, 0):
            label = "warm-up end"
        elif prev == -1 and cur == 0:
            label = "decay end"
        else:
            label = {1: "lr up", -1: "lr down", 0: "lr flat"}[cur]
        out.append((int(st[i]), label))
    return out


def marker_steps(s, steps=None, lrs=None) -> dict[str, list[int]]:
    """Steps of each marker kind, from the RunState; `steps` and `lrs`: the train steps and their lrs as
    arrays where the caller has them (the chart keeps them converted), else read from the state."""
    return {
        "checkpoint": [st for st, _ in s.checkpoints],
        "eval": list(s.val.steps),
        "lr": [st for st, _ in lr_phase_changes(s.train.steps if steps is None else steps,
                                                 s.lrs if lrs is None else lrs)],
        "skipped": list(s.skipped_steps),
        "throttle": list(s.throttle_steps),
        "resume": list(s.resumes),
    }


def one_per_column(xs: np.ndarray, lo: float, hi: float, width: int) -> np.ndarray:
    """The first of the xs that fall in each of `width` character columns spanning [lo, hi]: a rug of
    thousands of evals draws the same letters from as many points as the chart has columns."""
    if xs.size <= width:
        return xs
    cols = np.floor((xs - lo) / max(hi - lo, 1e-12) * width)
    _, first = np.unique(cols, return_index=True)
    return xs[np.sort(first)]


def steps_to_x(curve, steps, axis: str) -> np.ndarray:
    """Map steps to the x of `axis` (tokens, seconds) through the train curve (nearest logged step)."""
    steps = np.asarray(steps, dtype=np.float64)
    if axis == "step" or len(curve) == 0 or steps.size == 0:
        return steps
    cs = np.asarray(curve.steps, dtype=np.float64)
    cx = np.asarray(curve.x(axis), dtype=np.float64)
    idx = np.clip(np.searchsorted(cs, steps), 0, len(cs) - 1)
    return cx[idx]


def place_markers(xs_by_kind: dict[str, np.ndarray], lo: float, hi: float, columns: int) -> dict[str, tuple]:
    """Where each marker letter goes on a rug of `columns` character columns spanning [lo, hi]: one letter per
    column, and letters of different kinds keep a free column between them (side by side, `L` and `R` would
    read as one word `LR`). Kinds are placed in PRIORITY order, each marker at its own column or, when that
    is crowded, the nearest good one at most MAX_SHIFT columns away (right first); a marker with none is left
    out. Returns kind -> (the xs each placed letter stands for, the xs to draw them at: column centres)."""
    span = max(hi - lo, 1e-12)
    last = max(columns - 1, 1)
    taken: dict[int, str] = {}

    def free(col: int, kind: str) -> bool:
        return 0 <= col <= last and col not in taken and all(
            taken.get(c, kind) == kind for c in (col - 1, col + 1))

    out = {}
    for kind in sorted(xs_by_kind, key=lambda k: PRIORITY.index(k) if k in PRIORITY else len(PRIORITY)):
        xs = np.asarray(xs_by_kind[kind], dtype=np.float64)
        marks, at = [], []
        for x in xs.tolist():
            home = round((x - lo) / span * last)
            col = next((c for d in range(MAX_SHIFT + 1) for c in (home + d, home - d) if free(c, kind)), None)
            if col is None:
                continue
            taken[col] = kind
            marks.append(x)
            at.append(lo + col / last * span)
        out[kind] = (np.asarray(marks), np.asarray(at))
    return out
