"""The real app in a pseudo-terminal, with Textual's Linux driver: what the pilot's headless driver cannot
show (signals, threads, the terminal itself)."""
from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
from pty_terminal import Terminal, thread_count  # noqa: E402

FIXTURE = ROOT / "tests" / "fixtures" / "tui" / "nanogpt-tiny" / "events.jsonl"

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs /proc and a Linux pty")


def settle(pid: int, seconds: float = 5.0) -> int:
    """Thread count once it has stopped changing (Textual starts and stops threads as it enters modes)."""
    deadline, last = time.time() + seconds, -1
    while time.time() < deadline:
        n = thread_count(pid)
        if n == last:
            return n
        last = n
        time.sleep(0.3)
    return last


def test_a_cockpit_stopped_and_continued_from_outside_keeps_one_set_of_threads_and_repaints():
    # `kill -STOP` / `kill -CONT` (a debugger, a benchmark freezing the UI) used to start a second input and
    # writer thread on every continue: 5 threads became 25 after five stops, each polling 10 times a second
    term = Terminal([sys.executable, "-m", "cockpit", "watch", str(FIXTURE)], cols=120, rows=40, cwd=ROOT)
    try:
        assert term.wait_for(b"completed", 30) is not None, term.out[-2000:]
        before = settle(term.pid)
        for _ in range(4):
            os.kill(term.pid, signal.SIGSTOP)
            time.sleep(0.2)
            shown = len(term.out)
            os.kill(term.pid, signal.SIGCONT)
            deadline = time.time() + 10
            while b"completed" not in term.out[shown:] and time.time() < deadline:
                time.sleep(0.05)
            assert b"completed" in term.out[shown:], "the screen was not repainted after SIGCONT"
        assert settle(term.pid) == before
        term.send(b"\x11")                       # ctrl+q: the keyboard still reaches the app
        assert term.wait(15) == 0
    finally:
        term.kill()
