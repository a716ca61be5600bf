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
