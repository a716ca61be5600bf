"""Removing one run directory, after checking that it is one."""
from __future__ import annotations

import shutil
from pathlib import Path

from cockpit.runs import RunsError
from cockpit.runs.index import forget, read_run
from common.paths import LOG_NAME, runs_root


def delete_run(path: str | Path, root: str | Path | None = None) -> Path:
    """Remove one run directory (its log, checkpoints, samples) and return it. Refuses (RunsError) anything
    but a real directory directly under the runs root that holds an events.jsonl, and a run whose trainer
    is still alive."""
    root_p = runs_root(root)
    p = Path(path)
    if p.name == LOG_NAME and p.is_file():
        p = p.parent
    try:
        real_root = root_p.resolve(strict=True)
    except (OSError, RuntimeError):
        raise RunsError(f"{root_p}: the runs directory does not exist; nothing to delete") from None
    if p.is_symlink():
        raise RunsError(f"{path}: is a symbolic link, not a run directory; delete it by hand if you mean to")
    try:
        real = p.resolve(strict=True)
    except (OSError, RuntimeError):
        raise RunsError(f"{path}: no such run directory") from None
    if real.parent != real_root or not real.is_dir():
        raise RunsError(f"{path}: is not a run directory directly under {root_p}; refusing to delete it")
    if not (real / LOG_NAME).is_file():
        raise RunsError(f"{path}: has no {LOG_NAME}, so it is not a run directory; refusing to delete it")
    info = read_run(real / LOG_NAME)
    if info.status == "running":
        raise RunsError(f"{path}: the run is still running (pid {info.pid}); stop it before deleting it")
    shutil.rmtree(real)
    forget(p / LOG_NAME)
    forget(real / LOG_NAME)
    return real
