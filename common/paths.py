"""Where runs live. A run is a directory under the runs root holding `events.jsonl` (the event log),
`ckpt.pt` (the latest checkpoint) and `trainer.out` (the trainer's own stdout and stderr when the cockpit
launched it). The root is an explicit directory, else $COCKPIT_RUNS, else ./runs."""
from __future__ import annotations

import os
import time
from pathlib import Path

LOG_NAME = "events.jsonl"
OUT_NAME = "trainer.out"
CKPT_NAME = "ckpt.pt"
DEFAULT_ROOT = "runs"
ENV_ROOT = "COCKPIT_RUNS"


def runs_root(directory: str | Path | None = None) -> Path:
    """The runs directory: `directory` if given, else $COCKPIT_RUNS, else ./runs."""
    if directory:
        return Path(directory)
    return Path(os.environ.get(ENV_ROOT) or DEFAULT_ROOT)


def default_log_path(name: str, root: str | Path | None = None) -> Path:
    """runs/<name>-<YYYYmmdd-HHMMSS>/events.jsonl, its directory created here and now. The directory is
    created exclusively: a second run started in the same second (a sweep in a shell loop) gets -2, -3 ...
    instead of sharing a log and a checkpoint with the first."""
    base = runs_root(root)
    base.mkdir(parents=True, exist_ok=True)
    stamp = f"{Path(name).name or 'run'}-{time.strftime('%Y%m%d-%H%M%S')}"
    k = 1
    while True:
        d = base / (stamp if k == 1 else f"{stamp}-{k}")
        try:
            d.mkdir()
            return d / LOG_NAME
        except FileExistsError:
            k += 1
