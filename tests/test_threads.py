"""The trainer's CPU thread count follows the cores other processes leave free (trainers/threads.py)."""
from __future__ import annotations

import psutil
import pytest

from trainers.threads import ThreadGovernor, choose_threads, system_busy_seconds


@pytest.mark.parametrize("current, others, expected", [
    (2, 0.05, 2),   # quiet machine: both cores
    (2, 0.3, 2),    # a TUI redrawing: keep both
    (2, 0.55, 2),   # barely over the line: hysteresis keeps 2
    (2, 0.7, 1),    # another process holds most of a core: one thread
    (2, 1.9, 1),    # never fewer than one
    (1, 0.45, 1),   # not clearly free yet: stay at 1
    (1, 0.2, 2),    # the other process left: back to 2
])
def test_choose_threads_on_two_cores(current, others, expected):
    assert choose_threads(current, cores=2, others=others, max_threads=2) == expected


def test_choose_threads_never_exceeds_torch_default():
    assert choose_threads(4, cores=16, others=0.0, max_threads=4) == 4


class FakeTorch:
    def __init__(self, n):
        self.n, self.calls = n, []

    def get_num_threads(self):
        return self.n

    def set_num_threads(self, n):
        self.n = n
        self.calls.append(n)


class FakeMachine:
    """A clock, the system's busy CPU seconds and our own CPU seconds, advanced by hand."""

    def __init__(self):
        self.t = self.busy = self.own = 0.0

    def advance(self, seconds, ours, others):
        self.t += seconds
        self.own += ours * seconds
        self.busy += (ours + others) * seconds


def make_governor(monkeypatch, machine, torch_mod, logs):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1}, raising=False)
    return ThreadGovernor(torch_mod, interval=2.0, log=lambda lvl, msg: logs.append(msg),
                          clock=lambda: machine.t, busy=lambda: machine.busy, own=lambda: machine.own)


def test_governor_drops_a_thread_under_competition_and_takes_it_back(monkeypatch):
    m, fake, logs = FakeMachine(), FakeTorch(2), []
    gov = make_governor(monkeypatch, m, fake, logs)
    m.advance(2.5, ours=2.0, others=0.05)
    assert gov.tick() == 2 and fake.calls == []
    m.advance(1.0, ours=1.3, others=0.7)
    assert gov.tick() == 2, "checks only every interval"
    m.advance(1.5, ours=1.3, others=0.7)
    assert gov.tick() == 1 and fake.calls == [1]
    assert "0.7 of 2 cores" in logs[-1] and "1 thread" in logs[-1]
    m.advance(2.0, ours=1.0, others=1.0)
    assert gov.tick() == 1
    m.advance(2.0, ours=1.0, others=0.0)
    assert gov.tick() == 2 and fake.calls == [1, 2]
    assert len(logs) == 2


def test_explicit_omp_num_threads_is_left_alone(monkeypatch):
    m, fake = FakeMachine(), FakeTorch(2)
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    gov = ThreadGovernor(fake, clock=lambda: m.t, busy=lambda: m.busy, own=lambda: m.own)
    m.advance(5.0, ours=1.0, others=1.5)
    assert gov.tick() == 2 and fake.calls == []


def test_reads_this_machines_busy_time():
    a = system_busy_seconds()
    sum(i * i for i in range(200_000))
    b = system_busy_seconds()
    assert a is not None and b >= a > 0


def test_unreadable_cpu_times_disable_the_governor(monkeypatch):
    def no_proc_stat():  # what psutil raises on Linux without /proc mounted
        raise FileNotFoundError(2, "No such file or directory", "/proc/stat")
    monkeypatch.setattr(psutil, "cpu_times", no_proc_stat)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert system_busy_seconds() is None
    fake = FakeTorch(2)
    assert not ThreadGovernor(fake).enabled and ThreadGovernor(fake).tick() == 2 and fake.calls == []
