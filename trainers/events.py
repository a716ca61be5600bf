"""The event writer: one JSON object per line, flushed per event (DESIGN.md, event log v1).

A killed writer can leave at most a torn last line; every complete line is a valid event.
"""
from __future__ import annotations

import json
import math
import os
import threading
import time
from pathlib import Path

SCHEMA_VERSION = 1


def _clean(obj):
    """JSON has no NaN/inf: write them as strings so every line stays strict JSON."""
    if isinstance(obj, float):
        if math.isnan(obj):
            return "nan"
        if math.isinf(obj):
            return "inf" if obj > 0 else "-inf"
        return obj
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


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
            self._fh = open(self.path, "a", encoding="utf-8")

    def emit(self, type_: str, **fields) -> dict:
        event = {"v": SCHEMA_VERSION, "type": type_, "time": time.time(), **fields}
        if self.enabled:
            line = json.dumps(_clean(event), separators=(",", ":"), allow_nan=False) + "\n"
            with self._lock:
                if self._fh is not None and self.failed is None:
                    try:
                        self._fh.write(line)
                        self._fh.flush()
                    except OSError as e:  # disk full: keep training state intact, report at the end
                        self.failed = e
            if self.echo is not None:
                self.echo(event)
        return event

    def retry(self, type_: str, **fields) -> bool:
        """Write one event even after a failure (e.g. the run_end once disk space is back)."""
        event = {"v": SCHEMA_VERSION, "type": type_, "time": time.time(), **fields}
        if not self.enabled or self.path is None:
            return False
        line = json.dumps(_clean(event), separators=(",", ":"), allow_nan=False) + "\n"
        with self._lock:
            if self._fh is not None:
                try:
                    self._fh.close()  # may raise again while flushing what the full disk refused
                except OSError:
                    pass
            try:
                # start on a fresh line: the failed write may have left a partial one
                with open(self.path, "a", encoding="utf-8") as f:
                    f.write("\n" + line)
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
