"""A run as the browser's text cells, and the plain-text table of `cockpit runs` without a terminal."""
from __future__ import annotations

import time

from common.fmt import fmt_count, fmt_duration, fmt_loss, fmt_rate

# (RunInfo attribute, column title): the browser's columns, in order
COLUMNS = [
    ("preset", "preset"), ("arch", "arch"), ("status", "status"), ("steps", "steps"),
    ("best_val", "best val"), ("throughput", "speed"), ("params", "params"), ("wall_time", "wall"),
    ("started", "started"), ("run_id", "run"),
]
NUMERIC = {"steps", "best val", "speed", "params", "wall"}
# When the browser is narrower than every cell in full, these columns give up width first, in this order and
# down to these widths (their cells cut with …); the run id, which `--resume` and the detail pane name, is
# never cut. The preset and the start time are in the run id already, so they go first.
SHRINK = (("preset", 4), ("arch", 4), ("started", 5), ("status", 6), ("throughput", 6), ("steps", 5),
          ("params", 5), ("best_val", 6))


def fmt_started(t: float | None, now: float | None = None) -> str:
    """`2026-11-21 05:47`; with `now`, the browser's short form: `11-21 05:47` this year, `2025-11-21` before."""
    if t is None:
        return "-"
    when = time.localtime(t)
    if now is None:
        return time.strftime("%Y-%m-%d %H:%M", when)
    return time.strftime("%m-%d %H:%M" if when.tm_year == time.localtime(now).tm_year else "%Y-%m-%d", when)


def fit_widths(natural: dict[str, int], room: int) -> dict[str, int]:
    """Column widths (key -> characters) whose sum is at most `room` where SHRINK allows it: each column in
    SHRINK order gives up what is still too much, down to its minimum; the others keep their natural width."""
    widths = dict(natural)
    for key, least in SHRINK:
        over = sum(widths.values()) - room
        if over <= 0:
            break
        if key in widths:
            widths[key] = max(min(least, widths[key]), widths[key] - over)
    return widths


def cut(text: str, width: int) -> str:
    """`text` in at most `width` characters, ending with … when it had to be cut."""
    return text if len(text) <= width else text[:max(0, width - 1)] + "…"


def run_cells(r, now: float | None = None) -> list[str]:
    """One run (a RunInfo) as text cells, in COLUMNS order; `now`: the browser's short start dates."""
    steps = f"{r.steps}/{r.max_steps}" if r.max_steps else str(r.steps)
    # the unit with each figure: a language model's tokens/s and a diffusion model's items/s share the column
    rate = "-" if r.throughput is None else fmt_rate(r.throughput) + (" tok/s" if r.unit == "tokens" else " it/s")
    return [r.preset or "?", r.arch or "?", r.status, steps, fmt_loss(r.best_val), rate,
            fmt_count(r.params), fmt_duration(r.wall_time), fmt_started(r.started, now), r.run_id or r.name]


def runs_table(runs: list) -> str:
    header = [t for _, t in COLUMNS]
    rows = [run_cells(r) for r in runs]
    widths = [max([len(header[i])] + [len(row[i]) for row in rows]) for i in range(len(header))]

    def line(cells):
        return "  ".join(c.rjust(w) if h in NUMERIC else c.ljust(w)
                         for c, w, h in zip(cells, widths, header)).rstrip()
    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])
