"""Where runs live. A run is a directory under the runs root holding `events.jsonl` (the event log),
`ckpt.pt` (the latest checkpoint) and `trainer.out` (the trainer's own stdout and stderr when the cockpit
launched it). The root is an explicit directory, else $COCKPIT_RUNS, else ./runs.

What the cockpit measures once and reuses (the presets' sizes, the kernels comparison) lives in its cache
directory: $COCKPIT_CACHE, else $XDG_CACHE_HOME/cockpit, else ~/.cache/cockpit."""
from __future__ import annotations

import os
import time
from pathlib import Path

LOG_NAME = "events.jsonl"
OUT_NAME = "trainer.out"
CKPT_NAME = "ckpt.pt"
DEFAULT_ROOT = "runs"
ENV_ROOT = "COCKPIT_RUNS"
ENV_CACHE = "COCKPIT_CACHE"
NAME_RULE = "letters, digits, '.', '_', '-' and '+', starting with a letter or digit, at most 100 bytes"
MAX_NAME = 100  # UTF-8 bytes; a run directory adds -YYYYmmdd-HHMMSS-k: well inside a file name's 255 bytes


def name_problem(name: str) -> str | None:
    """Why `name` (a preset's `name`) cannot name a run directory, or None when it can. Names are names: no
    path separators, no `..`, nothing a shell or a terminal would read as more than a name."""
    if not name:
        return "is empty"
    if _size(name) > MAX_NAME:
        return f"is {_size(name)} bytes long"
    bad = sorted({c for c in name if not _name_char(c)})
    if bad:
        return "contains " + ", ".join(repr(c) for c in bad[:5])
    if not name[0].isalnum():
        return f"starts with {name[0]!r}"
    return None


def _name_char(c: str) -> bool:
    return c.isalnum() or c in "._-+"  # letters and digits of any script


def safe_name(name: str) -> str:
    """`name` made into one path component by the rule of name_problem: each other character becomes '-',
    leading punctuation is dropped, the length is capped; 'run' when nothing is left."""
    kept = "".join(c if _name_char(c) else "-" for c in str(name)).lstrip("._-+")
    while _size(kept) > MAX_NAME:
        kept = kept[:-1]
    return kept or "run"


def _size(name: str) -> int:
    return len(name.encode("utf-8", "surrogatepass"))


def runs_root(directory: str | Path | None = None) -> Path:
    """The runs directory: `directory` if given, else $COCKPIT_RUNS, else ./runs."""
    if directory:
        return Path(directory)
    return Path(os.environ.get(ENV_ROOT) or DEFAULT_ROOT)


def cache_dir() -> Path:
    """The cockpit's cache directory (see the module docstring); not created here."""
    base = os.environ.get(ENV_CACHE) or os.path.join(os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache"),
                                                       "cockpit")
    return Path(base)


def default_log_path(name: str, root: str | Path | None = None) -> Path:
    """runs/<name>-<YYYYmmdd-HHMMSS>/events.jsonl, its directory created here and now, always inside the runs
    root (`name` goes through safe_name: ../x or /etc is never a path). The directory is created exclusively:
    a second run started in the same second (a sweep in a shell loop) gets -2, -3 ... instead of sharing a
    log and a checkpoint with the first."""
    base = runs_root(root)
    base.mkdir(parents=True, exist_ok=True)
    stamp = f"{safe_name(name)}-{time.strftime('%Y%m%d-%H%M%S')}"
    k = 1
    while True:
        d = base / (stamp if k == 1 else f"{stamp}-{k}")
        try:
            d.mkdir()
            return d / LOG_NAME
        except FileExistsError:
            k += 1
