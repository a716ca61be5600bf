"""Checkpoints: written to a temporary file, fsynced and renamed, so a crash never leaves half a file.

Format (torch.save dict): version, step, run_id, config (resolved preset), model (state dict), optimizer,
task (e.g. the tokenizer), rng (torch CPU/CUDA generator states), metrics. Loading uses
`torch.load(weights_only=True)`: no pickle code runs.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from common.paths import CKPT_NAME
from trainers.config import ConfigError

FORMAT_VERSION = 1


def save(path: str | Path, state: dict) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    for stale in path.parent.glob(f".{path.name}.tmp-*"):  # left by a writer killed mid-save (SIGKILL)
        if stale != tmp:
            try:
                stale.unlink()
            except OSError:
                pass
    try:
        with open(tmp, "wb") as f:
            torch.save({"version": FORMAT_VERSION, **state}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


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
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"{p}: checkpoint is unreadable ({type(e).__name__}: {first[:160]}); it may be "
                          "truncated or corrupted; resume from another checkpoint") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt or "config" not in ckpt:
        raise ConfigError(f"{p}: not a cockpit checkpoint (no model/config); resume from a file cockpit wrote")
    if ckpt.get("version", 0) > FORMAT_VERSION:
        raise ConfigError(f"{p}: checkpoint format v{ckpt['version']} is newer than this cockpit "
                          f"(v{FORMAT_VERSION}); upgrade cockpit")
    return ckpt


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
