"""Reading event logs (JSON Lines, DESIGN.md "Event log v1"). No torch here.

Readers never crash on a bad log: a line that is not a JSON object with a string `type` is counted as
skipped; a torn last line (a writer killed mid-write) is not an error; unknown types are passed on and
ignored by the reducer; lines longer than MAX_LINE are skipped without being held in memory whole.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

MAX_LINE = 10 * 1024 * 1024
KNOWN_VERSION = 1


class LogError(ValueError):
    """A log that cannot be read at all (missing, empty, a directory). str(e) is one line."""


@dataclass
class ReadStats:
    lines: int = 0
    events: int = 0
    skipped: int = 0
    torn_tail: bool = False
    newer_version: int | None = None
    reasons: dict[str, int] = field(default_factory=dict)

    def skip(self, reason: str):
        self.skipped += 1
        self.reasons[reason] = self.reasons.get(reason, 0) + 1

    def summary(self) -> str:
        parts = []
        if self.skipped:
            why = ", ".join(f"{n} {r}" for r, n in sorted(self.reasons.items()))
            parts.append(f"skipped {self.skipped} of {self.lines} lines ({why})")
        if self.torn_tail:
            parts.append("last line torn (writer stopped mid-line)")
        if self.newer_version:
            parts.append(f"log written by a newer schema (v{self.newer_version}); unknown fields and types ignored")
        return "; ".join(parts)


def parse_line(raw: bytes, stats: ReadStats) -> dict | None:
    stats.lines += 1
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        stats.skip("invalid UTF-8")
        return None
    text = text.strip()
    if not text:
        stats.lines -= 1
        return None
    try:
        obj = json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        stats.skip("not JSON")
        return None
    if not isinstance(obj, dict) or not isinstance(obj.get("type"), str):
        stats.skip("not an event object")
        return None
    v = obj.get("v", 1)
    if isinstance(v, int) and not isinstance(v, bool) and v > KNOWN_VERSION:
        stats.newer_version = max(v, stats.newer_version or 0)
    stats.events += 1
    return obj


def check_log(path: str | Path) -> Path:
    p = Path(path)
    if not p.exists():
        raise LogError(f"{path}: no such log file; pass the events.jsonl of a run (runs/<run>/events.jsonl)")
    if p.is_dir():
        cand = p / "events.jsonl"
        if cand.is_file():
            return check_log(cand)
        raise LogError(f"{path}: is a directory without events.jsonl; pass a log file")
    try:
        size = p.stat().st_size
    except OSError as e:
        raise LogError(f"{path}: cannot read ({e.strerror}); check permissions") from None
    if size == 0:
        raise LogError(f"{path}: log is empty; the run wrote no events yet (use `cockpit watch` for a live run)")
    if not os.access(p, os.R_OK):
        raise LogError(f"{path}: cannot read (permission denied); check permissions")
    return p


def _iter_raw_lines(f, stats: ReadStats, final: bool):
    """Yield complete lines (bytes) from a binary file; lines over MAX_LINE are skipped in chunks."""
    parts: list[bytes] = []  # pieces of the current line (joined once its newline arrives)
    size = 0
    oversized = False
    while True:
        chunk = f.read(1 << 20)
        if not chunk:
            break
        start = 0
        while True:
            nl = chunk.find(b"\n", start)
            if nl < 0:
                rest = chunk[start:]
                if oversized:
                    pass  # still inside a line over MAX_LINE: drop its bytes
                elif size + len(rest) > MAX_LINE:
                    oversized, parts, size = True, [], 0
                elif rest:
                    parts.append(rest)
                    size += len(rest)
                break
            piece = chunk[start:nl]
            start = nl + 1
            if oversized or size + len(piece) > MAX_LINE:
                oversized, parts, size = False, [], 0
                stats.lines += 1
                stats.skip("over 10 MB")
                continue
            line = b"".join(parts) + piece if parts else piece
            parts, size = [], 0
            yield line
    buf = b"".join(parts)
    if oversized:
        stats.lines += 1
        stats.skip("over 10 MB")
    elif buf.strip() and final:
        # a last line without newline: complete JSON is an event, otherwise a torn tail (not an error)
        try:
            obj = json.loads(buf.decode("utf-8"))
            if isinstance(obj, dict):
                yield buf
                return
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
            pass
        stats.torn_tail = True


def read_events(path: str | Path, stats: ReadStats | None = None):
    """Iterate the events of a finished (or growing) log once."""
    stats = stats if stats is not None else ReadStats()
    p = check_log(path)
    with open(p, "rb") as f:
        for raw in _iter_raw_lines(f, stats, final=True):
            ev = parse_line(raw, stats)
            if ev is not None:
                yield ev


class Follower:
    """Tails a growing log: `poll()` returns the new complete events since the last call.

    Incomplete trailing lines stay buffered until their newline arrives, so a live writer's partial line
    is never mistaken for garbage. Cheap to call often: one stat and one read of the new bytes.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.pos = 0
        self.buf = b""
        self.stats = ReadStats()
        self.inode = None

    def poll(self, max_bytes: int = 64 << 20) -> list[dict]:
        try:
            st = self.path.stat()
        except OSError:
            return []
        if self.inode is not None and (st.st_ino != self.inode or st.st_size < self.pos):
            self.pos, self.buf = 0, b""  # rotated or truncated: start over
        self.inode = st.st_ino
        if st.st_size <= self.pos:
            return []
        with open(self.path, "rb") as f:
            f.seek(self.pos)
            data = f.read(min(max_bytes, st.st_size - self.pos))
        self.pos += len(data)
        self.buf += data
        out = []
        lines = self.buf.split(b"\n")
        self.buf = lines.pop()
        if len(self.buf) > MAX_LINE:
            self.buf = b""
            self.stats.lines += 1
            self.stats.skip("over 10 MB")
        for raw in lines:
            ev = parse_line(raw, self.stats)
            if ev is not None:
                out.append(ev)
        return out

    def finish(self) -> list[dict]:
        """At the end (the writer is gone): a complete last line without newline still counts."""
        out = self.poll()
        if self.buf.strip():
            try:
                obj = json.loads(self.buf.decode("utf-8"))
                if isinstance(obj, dict) and isinstance(obj.get("type"), str):
                    self.stats.lines += 1
                    self.stats.events += 1
                    out.append(obj)
                else:
                    self.stats.torn_tail = True
            except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
                self.stats.torn_tail = True
            self.buf = b""
        return out
