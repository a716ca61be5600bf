"""CPU threads for training: as many intra-op threads as there are cores nobody else is using.

torch's OpenMP threads spin at every barrier. On a quiet machine that is the fastest setting (2 threads
with OpenMP's default bounded spin beat both passive waiting and one thread by ~1.5x on the 2-core dev
machine); but when another process holds a core, a team of threads as wide as the machine waits at every
barrier for the thread that was descheduled, and a step can take 10x longer than with one thread fewer.

So the trainer watches the machine: every `interval` seconds it reads how much CPU the rest of the system
used (the machine's busy CPU time, from psutil, minus this process's own CPU time) and sets the thread
count to the cores left over, with a little hysteresis so that a TUI redraw does not flip it. An explicit
OMP_NUM_THREADS (torchrun sets 1 per rank) is the user's choice and is left alone.
"""
from __future__ import annotations

import math
import os
import time

import psutil


def cpu_busy_total() -> tuple[float, float] | None:
    """(busy, total) CPU seconds of all cores since boot, or None where the system will not say.

    busy = total - idle - iowait (user+nice+system+irq+softirq+steal on Linux); guest time is already part
    of user and nice, so it is not counted twice.
    """
    try:
        t = psutil.cpu_times()
    except (psutil.Error, OSError):
        return None
    total = sum(t) - getattr(t, "guest", 0.0) - getattr(t, "guest_nice", 0.0)
    return total - t.idle - getattr(t, "iowait", 0.0), total


def system_busy_seconds() -> float | None:
    """CPU seconds all cores spent busy since boot, or None."""
    times = cpu_busy_total()
    return times[0] if times else None


def own_cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


def choose_threads(current: int, cores: int, others: float, max_threads: int, margin: float = 0.1) -> int:
    """Threads to use when other processes keep `others` cores busy.

    The cores left over are cores - others; round them to whole threads (at least 1, at most max_threads),
    moving only when the rounding is clear by `margin`: 2 cores, others 0.55 -> stay at 2; others 0.7 -> 1.
    """
    free = cores - others
    want = max(1, min(max_threads, math.floor(free + 0.5)))
    if want < current and free + 0.5 - current > -margin:
        return current  # barely below the line: keep
    if want > current and free + 0.5 - want < margin:
        return current  # barely above the line: keep
    return want


class ThreadGovernor:
    """Adjusts torch's intra-op thread count from the loop (set_num_threads must run on the main thread)."""

    def __init__(self, torch_mod, interval: float = 2.0, log=None, clock=time.monotonic,
                 busy=system_busy_seconds, own=own_cpu_seconds):
        self.torch = torch_mod
        self.interval = interval
        self.log = log
        self.clock, self.busy, self.own = clock, busy, own
        self.cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        self.max_threads = torch_mod.get_num_threads()
        self.threads = self.max_threads
        self.enabled = (self.max_threads > 1 and "OMP_NUM_THREADS" not in os.environ
                        and self.busy() is not None)
        self._mark = (self.clock(), self.busy(), self.own()) if self.enabled else None
        self.changes = 0

    def tick(self) -> int:
        """Call between steps; cheap unless `interval` has passed. Returns the thread count in use."""
        if not self.enabled:
            return self.threads
        now = self.clock()
        t0, b0, o0 = self._mark
        if now - t0 < self.interval:
            return self.threads
        b1, o1 = self.busy(), self.own()
        self._mark = (now, b1, o1)
        if b1 is None or b0 is None:
            return self.threads
        others = max(0.0, ((b1 - b0) - (o1 - o0)) / (now - t0))
        want = choose_threads(self.threads, self.cores, others, self.max_threads)
        if want != self.threads:
            self.torch.set_num_threads(want)
            self.changes += 1
            if self.log is not None:
                self.log("info", f"cpu: other processes are using {others:.1f} of {self.cores} cores; "
                                 f"training on {want} thread{'s' if want > 1 else ''} (was {self.threads}); "
                                 "set OMP_NUM_THREADS to fix the count")
            self.threads = want
        return self.threads
