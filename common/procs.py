"""Is the trainer that writes a log still alive? One answer, used by the run screen, `watch`, `--replay`,
the comparison and the runs index. psutil reads the process table on Linux, macOS and Windows alike."""
from __future__ import annotations

import psutil

# A trainer starts, then writes run_start: its process cannot have started after the event's time, except
# by a clock stepped forward in between (NTP). A process that started later reuses the pid.
REUSE_SLACK_S = 30.0
TRAINER_WORDS = ("python", "cockpit", "trainers")


def pid_alive(pid) -> bool:
    """A running process has this pid (a zombie, exited but not yet reaped, does not count)."""
    if type(pid) is not int or pid <= 0:
        return False
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:  # someone else's live process
        return True


def trainer_alive(pid, started_at: float | None = None) -> bool:
    """Is the trainer that wrote `run_start` (pid, at unix time started_at) still running?

    A live pid is not enough: pids are reused, and a runs directory may come from another machine. Where
    the process table tells, the process must be a Python (or cockpit) process that started before the run
    did (REUSE_SLACK_S allows for a clock stepped forward meanwhile)."""
    if not pid_alive(pid):
        return False
    try:
        proc = psutil.Process(pid)
        with proc.oneshot():
            try:
                cmd = " ".join(proc.cmdline())
            except psutil.AccessDenied:
                cmd = ""
            created = proc.create_time()
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True
    if cmd and not any(w in cmd for w in TRAINER_WORDS):
        return False
    return started_at is None or created <= started_at + REUSE_SLACK_S
