"""The event writer: one JSON object per line, flushed per event, in the protocol of common/events.py.

Every event is checked against its declared fields and types as it is written (an undeclared field or a
wrong type is a bug in the trainer, raised at once). A killed writer can leave at most a torn last line;
every complete line is a valid event.
"""
from __future__ import annotations

import os
import threading
import time
from pathlib import Path

from common import events as E


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
