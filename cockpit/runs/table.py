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


def fmt_started(t: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(t)) if t is not None else "-"


def run_cells(r) -> list[str]:
    """One run (a RunInfo) as text cells, in COLUMNS order."""
    steps = f"{r.steps}/{r.max_steps}" if r.max_steps else str(r.steps)
    # the unit with each figure: a language model's tokens/s and a diffusion model's items/s share the column
    rate = "-" if r.throughput is None else fmt_rate(r.throughput) + (" tok/s" if r.unit == "tokens" else " it/s")
    return [r.preset or "?", r.arch or "?", r.status, steps, fmt_loss(r.best_val), rate,
            fmt_count(r.params), fmt_duration(r.wall_time), fmt_started(r.started), r.run_id or r.name]


def runs_table(runs: list) -> str:
    header = [t for _, t in COLUMNS]
    rows = [run_cells(r) for r in runs]
    widths = [max([len(header[i])] + [len(row[i]) for row in rows]) for i in range(len(header))]

    def line(cells):
        return "  ".join(c.rjust(w) if h in NUMERIC else c.ljust(w)
                         for c, w, h in zip(cells, widths, header)).rstrip()
    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])
