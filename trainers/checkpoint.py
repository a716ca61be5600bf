"""Checkpoints: written to a temporary file, fsynced and renamed (common/atomic.py), so a crash never leaves
half a file, and only ever over a regular file.

Format (torch.save dict): version, step, run_id, config (resolved preset), model (state dict), optimizer,
task (e.g. the tokenizer), rng (torch CPU/CUDA generator states), metrics (best_val_loss, units, skipped_nonfinite,
and elapsed: the seconds the run had trained when it was written, which a resume counts on from). Loading uses
`torch.load(weights_only=True)`: no pickle code runs.
"""
from __future__ import annotations

import errno
import math
from pathlib import Path

import torch

from common.atomic import atomic_path
from common.paths import CKPT_NAME
from trainers.config import ConfigError

FORMAT_VERSION = 1


def save(path: str | Path, state: dict) -> Path:
    """Write a checkpoint atomically. OSError (disk full, read-only, too large for `ulimit -f`, ...) or
    NotAFileTarget: the file that was at `path` is untouched."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        try:
            torch.save({"version": FORMAT_VERSION, **state}, f)
        except RuntimeError as e:
            # after a failed write torch still closes its archive, and that second failure (an opaque
            # "unexpected pos ...") replaces the first: raise the first, which says why (or that a signal
            # interrupted the write)
            if isinstance(e.__context__, (OSError, KeyboardInterrupt)):
                raise e.__context__ from None
            raise
    return Path(path)


def resolve(path: str | Path) -> Path:
    """A run directory (its ckpt.pt) or a checkpoint file."""
    p = Path(path)
    if p.is_dir():
        p = p / CKPT_NAME
    if not p.is_file():
        raise ConfigError(f"--resume {path}: no checkpoint found at {p}; give a run directory with {CKPT_NAME} "
                          "or a checkpoint file")
    return p


def load(path: str | Path, map_location="cpu") -> dict:
    p = resolve(path)
    try:
        ckpt = torch.load(p, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated zip, garbage bytes, pickled code refused by weights_only
        if is_out_of_memory(e):
            raise ConfigError(f"{p}: not enough memory to load this checkpoint ({p.stat().st_size / 2**20:.0f} "
                              "MiB on disk); free memory or load it on a larger machine") from None
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"{p}: checkpoint is unreadable ({type(e).__name__}: {first[:160]}); it may be "
                          "truncated or corrupted; resume from another checkpoint") from None
    if isinstance(ckpt, dict) and {"model_args", "iter_num"} <= ckpt.keys():
        raise ConfigError(f"{p}: a nanoGPT checkpoint (model_args, iter_num), not one cockpit wrote; cockpit "
                          "resumes only its own runs (runs/<run>/ckpt.pt): start a run here with `cockpit train "
                          "nanogpt`")
    if not isinstance(ckpt, dict) or "model" not in ckpt or "config" not in ckpt:
        raise ConfigError(f"{p}: not a cockpit checkpoint (no model/config); resume from a file cockpit wrote")
    step = ckpt.get("step")
    if type(step) is not int or step < 0 or not isinstance(ckpt["model"], dict):
        raise ConfigError(f"{p}: the checkpoint is damaged (its step is {str(step)[:40]!r}, its model a "
                          f"{type(ckpt['model']).__name__}); resume from another checkpoint")
    if ckpt.get("version", 0) > FORMAT_VERSION:
        raise ConfigError(f"{p}: checkpoint format v{ckpt['version']} is newer than this cockpit "
                          f"(v{FORMAT_VERSION}); upgrade cockpit")
    return ckpt


def elapsed_of(metrics: dict) -> float:
    """The seconds of training a checkpoint's metrics record; 0 for a checkpoint written before they did (or a
    damaged count): the resumed run then counts from its own start."""
    value = metrics.get("elapsed")
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0:
        return float(value)
    return 0.0


def is_out_of_memory(e: BaseException) -> bool:
    """An allocation failure on any device: CUDA's OutOfMemoryError, the CPU allocator's RuntimeError
    ("DefaultCPUAllocator: can't allocate memory"), Python's MemoryError, or ENOMEM from the system."""
    if isinstance(e, (MemoryError, torch.OutOfMemoryError)):
        return True
    if isinstance(e, OSError):
        return e.errno == errno.ENOMEM
    msg = str(e).lower()
    return isinstance(e, RuntimeError) and ("out of memory" in msg or "can't allocate memory" in msg)


def rng_state(device: torch.device) -> dict:
    out = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        out["cuda"] = torch.cuda.get_rng_state(device)
    return out


def set_rng_state(state: dict, device: torch.device):
    if "cpu" in state:
        torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)
