"""The event writer: one JSON object per line, flushed per event, in the protocol of common/events.py.

Every event is checked against its declared fields and types as it is written (an undeclared field or a
wrong type is a bug in the trainer, raised at once). A killed writer can leave at most a torn last line;
every complete line is a valid event.

A run directory has one writer: the trainer holds RunLock on it for the run's life, so a second trainer
given the same --log (or resuming a run whose trainer still runs) is refused instead of interleaving the
log and fighting over the checkpoint. Readers (cockpit watch, the runs index) never take it.
"""
from __future__ import annotations

import fcntl
import os
import socket
import stat
import threading
import time
from pathlib import Path

from common import events as E
from common.atomic import file_kind
from common.cli import BadInput

LOCK_NAME = ".trainer.lock"
HOLDER_WAIT_S = 2.0  # a trainer that just took the lock writes its pid into it at once


class LogInUse(BadInput):
    """Another live trainer holds the run directory's lock."""


class RunLock:
    """flock(2) on `.trainer.lock` in the log's directory (which also holds the checkpoint), holding the
    writer's pid, host and log. The kernel releases it when the process ends however it ends (a crash, a
    SIGKILL), so a lock left by a dead trainer never blocks; the file itself stays (removing it would let
    two trainers lock two different files)."""

    def __init__(self, log: str | Path, hold: bool = True):
        """Take the lock (LogInUse when a live trainer has it). hold=False only checks: nothing is created,
        nothing is kept (see check)."""
        self.log = Path(log)
        self.path = self.log.parent / LOCK_NAME
        self._fd: int | None = os.open(self.path, os.O_RDWR | os.O_NONBLOCK | (os.O_CREAT if hold else 0), 0o644)
        try:
            mode = os.fstat(self._fd).st_mode
            if not stat.S_ISREG(mode):
                raise LogInUse(f"{self.path} is {file_kind(mode)}, not the lock file a trainer keeps there: "
                               "remove it or give this run another --log")
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise LogInUse(self._in_use()) from None
            if hold:
                os.ftruncate(self._fd, 0)
                os.pwrite(self._fd, f"{os.getpid()}\n{socket.gethostname()}\n{self.log}\n".encode(), 0)
        except BaseException:
            self.release()
            raise
        if not hold:
            self.release()

    @classmethod
    def check(cls, log: str | Path) -> None:
        """LogInUse now if a live trainer holds the lock, before this run creates any file there."""
        try:
            cls(log, hold=False)
        except (FileNotFoundError, NotADirectoryError):  # no lock file, no directory yet: nobody holds it
            pass

    def _in_use(self) -> str:
        pid, host, held_log = self._holder()
        who = "another trainer" if pid is None else f"the trainer pid {pid}" + (
            f" on {host}" if host != socket.gethostname() else "")
        writes = f" and writes {held_log}" if held_log not in (None, str(self.log)) else ""
        return (f"{self.log} is in use by {who}, which holds {self.path}{writes}; stop that run first, watch it "
                f"with `cockpit watch {held_log or self.log}`, or give this run another --log")

    def _holder(self) -> tuple[str | None, str | None, str | None]:
        """(pid, host, log) of the holder, from the lock file (which it writes just after locking)."""
        deadline = time.monotonic() + HOLDER_WAIT_S
        while True:
            try:
                lines = os.pread(self._fd, 4096, 0).decode("utf-8", "replace").splitlines()
            except OSError:
                lines = []
            if len(lines) >= 3:
                return lines[0], lines[1], lines[2]
            if time.monotonic() > deadline:
                return None, None, None
            time.sleep(0.05)

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the last descriptor releases the flock
            self._fd = None


class EventWriter:
    def __init__(self, path: str | Path | None, echo=None, enabled: bool = True):
        self.path = Path(path) if path else None
        self.enabled = enabled
        self.echo = echo  # callable(event) for headless progress printing
        self._lock = threading.Lock()
        self._fh = None
        self.failed: Exception | None = None
        if self.path is not None and enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = open(self.path, "ab")

    def emit(self, type_: str, **fields) -> bytes:
        """Write one event; returns its line. Disk full does not raise: see `failed` and `retry`."""
        line = E.encode(type_, fields, time.time())
        if self.enabled:
            with self._lock:
                if self._fh is not None and self.failed is None:
                    try:
                        self._fh.write(line)
                        self._fh.flush()
                    except OSError as e:  # disk full: keep training state intact, report at the end
                        self.failed = e
            if self.echo is not None:
                self.echo(E.decode(line[:-1]))
        return line

    def retry(self, type_: str, **fields) -> bool:
        """Write one event even after a failure (e.g. the run_end once disk space is back)."""
        line = E.encode(type_, fields, time.time())
        if not self.enabled or self.path is None:
            return False
        with self._lock:
            if self._fh is not None:
                try:
                    self._fh.close()  # may raise again while flushing what the full disk refused
                except OSError:
                    pass
            try:
                # start on a fresh line: the failed write may have left a partial one
                with open(self.path, "ab") as f:
                    f.write(b"\n" + line)
                self._fh = None
                return True
            except OSError:
                self._fh = None
                return False

    def moved(self) -> bool:
        """The log's path no longer names the file this writer appends to: its directory was renamed,
        removed or replaced during the run (the events still go to the file, wherever it is now)."""
        if self._fh is None or self.path is None:
            return False
        try:
            here, mine = os.stat(self.path), os.fstat(self._fh.fileno())
        except (FileNotFoundError, NotADirectoryError):
            return True
        except OSError:  # e.g. a directory made unreadable: whether it moved cannot be told
            return False
        return (here.st_dev, here.st_ino) != (mine.st_dev, mine.st_ino)

    def fsync(self):
        with self._lock:
            if self._fh is not None:
                try:
                    os.fsync(self._fh.fileno())
                except OSError:
                    pass

    def close(self):
        with self._lock:
            if self._fh is not None:
                try:
                    self._fh.close()
                except OSError:
                    pass
                self._fh = None
