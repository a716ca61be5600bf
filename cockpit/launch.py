"""Launching trainers: the subprocess command line, plain or under torchrun (`--nproc N`)."""
from __future__ import annotations

import sys


def trainer_argv(preset: str, overrides: list[str], log: str, resume: str | None = None,
                 commands: bool = True) -> list[str]:
    argv = [sys.executable, "-u", "-m", "trainers", preset, *overrides, "--log", log]
    if resume:
        argv += ["--resume", resume]
    if commands:
        argv.append("--commands")
    return argv


def torchrun_argv(nproc: int, trainer_args: list[str], rdzv: list[str] | None = None) -> list[str]:
    """`python -m torch.distributed.run --nproc_per_node N [rendezvous flags] -m trainers ...`"""
    rdzv = list(rdzv or [])
    if not rdzv:
        rdzv = ["--standalone"]
    return [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", *rdzv,
            "-m", "--", "trainers", *trainer_args]  # `--`: torchrun would read --log as its --log-dir
