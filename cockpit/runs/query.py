"""Sorting runs, and the filter language of the runs browser and `cockpit runs --filter`. Pure functions of
RunInfo lists (cockpit/runs/index.py)."""
from __future__ import annotations

import math
import re

from cockpit.runs import RunsError
from cockpit.runs.table import COLUMNS
from common.dotted import NestedTooDeep, flatten
from common.state import number

SORT_KEYS = tuple(k for k, _ in COLUMNS) + ("name", "task", "device", "size", "last_time")
TEXT_FIELDS = ("run_id", "preset", "arch", "status", "task", "device", "name")
ALIASES = {"val": "best_val", "tok/s": "throughput", "speed": "throughput", "wall": "wall_time", "run": "run_id"}
_COND = re.compile(r"^([A-Za-z_][\w.\-/]*)(<=|>=|<|>|=|:)(.*)$")


def _sort_value(r, key: str):
    v = getattr(r, key) if key in SORT_KEYS else None
    if isinstance(v, str):
        return v.lower()
    if isinstance(v, float) and math.isnan(v):
        return None
    return v


def sort_runs(runs: list, key: str = "started", reverse: bool = False) -> list:
    """A sorted copy; runs missing the value (None, NaN) always go last, in either direction."""
    if key not in SORT_KEYS:
        raise RunsError(f"cannot sort by {key!r}; use one of {', '.join(SORT_KEYS)}")
    have = [r for r in runs if _sort_value(r, key) is not None]
    missing = [r for r in runs if _sort_value(r, key) is None]
    have.sort(key=lambda r: (_sort_value(r, key), r.name), reverse=reverse)
    return have + missing


def _field(r, name: str):
    if name in SORT_KEYS or name in TEXT_FIELDS or name in ("best_val", "params", "pid"):
        return True, getattr(r, name)
    if name in ALIASES:
        return True, getattr(r, ALIASES[name])
    try:
        flat = flatten(r.config) if isinstance(r.config, dict) else {}
    except NestedTooDeep:  # such a run matches no config key; the others still filter
        return False, None
    if name in flat:
        return True, flat[name]
    return False, None


def _term_matches(r, term: str) -> bool:
    m = _COND.match(term)
    if m:
        known, value = _field(r, m.group(1))
        if known:
            op, want = m.group(2), m.group(3)
            if op == ":":
                return want.lower() in str(value).lower() if value is not None else want == ""
            num = number(value)
            try:
                w = float(want)
            except ValueError:
                return op == "=" and str(value).lower() == want.lower()
            if num is None:
                return False
            return {"<": num < w, ">": num > w, "<=": num <= w, ">=": num >= w, "=": num == w}[op]
    t = term.lower()
    return any(t in str(getattr(r, f) or "").lower() for f in TEXT_FIELDS)


def filter_runs(runs: list, query: str) -> list:
    """Runs matching every whitespace-separated term of `query`:
    `word` (substring of run id, preset, arch, status, task, device or directory name, any case),
    `field:text` (substring of that field, config keys included: `model.n_layer:2`),
    `field<n`, `field>n`, `field<=n`, `field>=n`, `field=n` (numeric: `best_val<1.5`, `steps>=1000`)."""
    terms = query.split()
    return [r for r in runs if all(_term_matches(r, t) for t in terms)]
