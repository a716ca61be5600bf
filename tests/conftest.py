"""Shared test helpers: run a trainer in-process or the cockpit CLI in a subprocess, read logs."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Spinning OpenMP threads crawl when the 2 cores are shared with other processes (trainer subprocesses)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("COCKPIT_CACHE", str(ROOT / ".pytest_cache" / "cockpit"))
# The fused kernels are tested on CPU tensors through Triton's interpreter. `@triton.jit` picks compiled or
# interpreted when a kernel file is imported, and importing a model imports its kernel file (the PyTorch
# references live there), which test modules do at collection, in whatever order they are collected: so the
# choice is made here, before any test module is imported.
os.environ["TRITON_INTERPRET"] = "1"


def read_log(path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def events_of(path, type_: str) -> list[dict]:
    return [e for e in read_log(path) if e["type"] == type_]


def train_in_process(preset: str, *overrides: str, log, resume: str | None = None) -> int:
    """Run `python -m trainers` in this process (fast: torch is already imported); signal handlers restored."""
    from trainers.__main__ import main

    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    args = [preset, *overrides, "--log", str(log)]
    if resume:
        args += ["--resume", resume]
    try:
        return main(args)
    finally:
        for s, h in saved.items():
            signal.signal(s, h)


def cockpit(*args: str, timeout: float = 300, env: dict | None = None, cwd=None) -> subprocess.CompletedProcess:
    """Run the `cockpit` CLI as a user would, without a TTY."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "cockpit", *args], capture_output=True, text=True,
                          timeout=timeout, env=full_env, cwd=cwd or ROOT, stdin=subprocess.DEVNULL)


TINY_GPT = ("model.n_layer=1", "model.n_head=2", "model.n_embd=32", "model.block_size=32",
            "train.batch_size=8", "train.eval_iters=2", "train.system_interval=0.5")


@pytest.fixture
def tiny_gpt():
    return TINY_GPT


@pytest.fixture
def interpreted(monkeypatch):
    """The fused kernels, run by Triton's interpreter on CPU tensors."""
    from kernels import integrate

    monkeypatch.setenv("COCKPIT_TRITON_INTERPRET", "1")
    integrate._reset_for_tests()
    assert integrate.backend() == "interpreter"
    yield
    integrate._reset_for_tests()


class FakeTty:
    """A stream that says it is a terminal (the UI's commands refuse to start without one)."""

    def __init__(self, stream):
        self.stream = stream

    def isatty(self):
        return True

    def __getattr__(self, name):
        return getattr(self.stream, name)


@pytest.fixture(autouse=True)
def restore_signal_handlers():
    """A trainer run in this process (its `main` called directly) ends by ignoring SIGINT and SIGTERM; a
    process the suite starts later would inherit that and outlive a SIGTERM. Every test leaves them as found."""
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    yield
    for s, h in saved.items():
        if signal.getsignal(s) is not h:
            signal.signal(s, h)
