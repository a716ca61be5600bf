"""The one reader of event logs (docs/events.md). No torch, no Textual.

    read_events(path, stats)     every event of a log, once; read_blocks the same a list at a time
                                 (`cockpit --replay`, load_state)
    Follower(path).poll()        the new events of a growing log since the last call (the run screen, watch)
    read_tail(f, size, nbytes)   the events of a log's last bytes (the runs index)
    scan(f, start, end, types)   the events of chosen types in a byte range, classified by their bytes
                                 before any decoding (the runs index's pass over a long log)
    last_event(f, end, type)     the last event of a type before a position, reading backwards

Every path goes through the same rules: a line that is not a JSON object with a string `type` is counted
as skipped, with its reason; an event of an unknown type (Unknown) or with missing or mistyped fields
(Invalid) is passed on for the reducer to count; a line longer than MAX_LINE is skipped without ever being
held in memory whole; and a torn last line (a writer killed mid-write) is not an error. Complete lines are
decoded many at a time (msgspec, typed), falling back to one at a time only where a block holds a bad line.
"""
from __future__ import annotations

import operator
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from common import events as E
from common.cli import BadInput

MAX_LINE = 10 * 1024 * 1024
CHUNK = 1 << 20


class LogError(BadInput, ValueError):
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


def check_log(path: str | Path, empty_ok: bool = False) -> Path:
    """The log file to read (a run directory means its events.jsonl); LogError when there is none (or, unless
    empty_ok, when it is empty)."""
    p = Path(path)
    if not p.exists():
        raise LogError(f"{path}: no such log file; pass the events.jsonl of a run (runs/<run>/events.jsonl)")
    if p.is_dir():
        cand = p / "events.jsonl"
        if cand.is_file():
            return check_log(cand, empty_ok)
        raise LogError(f"{path}: is a directory without events.jsonl; pass a log file")
    if not p.is_file():  # a pipe would block for ever, /dev/zero never end: a log is a file on disk
        raise LogError(f"{path}: not a regular file (a device, a pipe or a socket); pass a run's events.jsonl")
    try:
        size = p.stat().st_size
    except OSError as e:
        raise LogError(f"{path}: cannot read ({e.strerror}); check permissions") from None
    if size == 0 and not empty_ok:
        raise LogError(f"{path}: log is empty; the run wrote no events yet (use `cockpit watch` for a live run)")
    if not os.access(p, os.R_OK):
        raise LogError(f"{path}: cannot read (permission denied); check permissions")
    return p


# --- decoding lines ----------------------------------------------------------------------------------------

def _counted(evs: list, stats: ReadStats) -> list:
    """Count decoded events (each a line), noting a schema newer than this reader's."""
    stats.lines += len(evs)
    stats.events += len(evs)
    newest = max(map(_version, evs), default=0)
    if newest > E.SCHEMA_VERSION:
        stats.newer_version = max(newest, stats.newer_version or 0)
    return evs


_version = operator.attrgetter("v")


def decode_line(raw: bytes, stats: ReadStats):
    """One line (no newline) -> an event, Unknown or Invalid; None (counted in stats) for anything else."""
    if not raw.strip():
        return None
    try:
        return _counted([E.decode(raw)], stats)[0]
    except E.NotAnEvent as e:
        stats.lines += 1
        stats.skip(str(e))
        return None


def decode_block(block: bytes, stats: ReadStats) -> list:
    """Every event of complete lines `block` (newline-separated, no partial line)."""
    try:
        evs = E.decode_many(block)
    except Exception:  # noqa: BLE001 — some line is bad: decode one by one to count what and why
        out = []
        for raw in block.split(b"\n"):
            ev = decode_line(raw, stats)
            if ev is not None:
                out.append(ev)
        return out
    return _counted(evs, stats)


def decode_last(buf: bytes, stats: ReadStats) -> list:
    """A last line without its newline, once the writer is gone: a complete event counts, anything else is a
    torn tail (not an error)."""
    if not buf.strip():
        return []
    try:
        return _counted([E.decode(buf)], stats)
    except E.NotAnEvent:
        stats.torn_tail = True
        return []


class _Lines:
    """Splits bytes arriving in chunks into blocks of complete lines, dropping lines over MAX_LINE as they
    stream past (counted once each) so that a giant line is never held whole."""

    def __init__(self, stats: ReadStats):
        self.stats = stats
        self.buf = b""          # the start of a line whose newline has not arrived
        self.oversized = False  # inside a line over MAX_LINE: its bytes are dropped until its newline

    def feed(self, data: bytes) -> bytes:
        """Complete lines of `data` (with whatever was buffered before), as one block."""
        nl = data.rfind(b"\n")
        if nl < 0:
            self._hold(data)
            return b""
        head, rest = data[:nl], data[nl + 1:]
        first = head.find(b"\n")
        first_line = head if first < 0 else head[:first]
        if self.oversized or len(self.buf) + len(first_line) > MAX_LINE:
            self._skip_oversized()
            block = b"" if first < 0 else head[first + 1:]
        else:
            block = self.buf + head if self.buf else head
        self.buf, self.oversized = b"", False
        self._hold(rest)
        if len(block) > MAX_LINE:  # a long block may hide single lines over the limit: drop those
            block = self._drop_long_lines(block)
        return block

    def _hold(self, data: bytes):
        if self.oversized or not data:
            return
        if len(self.buf) + len(data) > MAX_LINE:
            self.buf, self.oversized = b"", True
        else:
            self.buf += data

    def _skip_oversized(self):
        self.stats.lines += 1
        self.stats.skip("over 10 MB")

    def _drop_long_lines(self, block: bytes) -> bytes:
        kept = []
        for line in block.split(b"\n"):
            if len(line) > MAX_LINE:
                self._skip_oversized()
            else:
                kept.append(line)
        return b"\n".join(kept)

    def end(self) -> bytes:
        """At the end of the data: the unterminated last line ('' when over the limit, counted)."""
        if self.oversized:
            self._skip_oversized()
        buf, self.buf, self.oversized = self.buf, b"", False
        return buf


# --- whole logs, and logs that grow ------------------------------------------------------------------------

def read_blocks(path: str | Path, stats: ReadStats | None = None):
    """Iterate the events of a finished (or growing) log once, a list per megabyte read (fold each with
    RunState.apply_all: faster than one event at a time)."""
    stats = stats if stats is not None else ReadStats()
    p = check_log(path)
    lines = _Lines(stats)
    with open(p, "rb") as f:
        while True:
            chunk = f.read(CHUNK)
            if not chunk:
                break
            block = lines.feed(chunk)
            if block:
                yield decode_block(block, stats)
    yield decode_last(lines.end(), stats)


def read_events(path: str | Path, stats: ReadStats | None = None):
    """Iterate the events of a finished (or growing) log once."""
    for block in read_blocks(path, stats):
        yield from block


class Follower:
    """Tails a growing log: `poll()` returns the new complete events since the last call.

    Incomplete trailing lines stay buffered until their newline arrives, so a live writer's partial line
    is never mistaken for garbage. Cheap to call often: one stat and one read of the new bytes.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.pos = 0
        self.stats = ReadStats()
        self.inode = None
        self.lines = _Lines(self.stats)

    def poll(self, max_bytes: int = 64 << 20) -> list:
        try:
            st = self.path.stat()
        except OSError:
            return []
        if self.inode is not None and (st.st_ino != self.inode or st.st_size < self.pos):
            self.pos, self.lines = 0, _Lines(self.stats)  # rotated or truncated: start over
        self.inode = st.st_ino
        if st.st_size <= self.pos:
            return []
        out = []
        with open(self.path, "rb") as f:
            f.seek(self.pos)
            left = min(max_bytes, st.st_size - self.pos)
            while left > 0:
                data = f.read(min(CHUNK * 4, left))
                if not data:
                    break
                self.pos += len(data)
                left -= len(data)
                block = self.lines.feed(data)
                if block:
                    out.extend(decode_block(block, self.stats))
        return out

    def finish(self) -> list:
        """At the end (the writer is gone): a complete last line without newline still counts."""
        out = self.poll()
        return out + decode_last(self.lines.end(), self.stats)


# --- parts of a log (the runs index) -----------------------------------------------------------------------

_TYPE = re.compile(rb'"type"\s*:\s*"([A-Za-z_]+)"')


def line_type(raw: bytes) -> str | None:
    """The `type` of an event line from its bytes, without decoding it (None when it has none)."""
    m = _TYPE.search(raw, 0, 96) or _TYPE.search(raw)
    return m.group(1).decode() if m else None


def read_tail(f, size: int, nbytes: int, stats: ReadStats | None = None) -> tuple[list, int]:
    """(the events of the complete lines in the last `nbytes` of an open binary log of `size` bytes, the offset
    where the first of those lines begins). The first piece is dropped unless the tail starts the file (it is
    the end of a line that began before: scan up to the returned offset to read it), and so is a torn last
    line."""
    stats = stats if stats is not None else ReadStats()
    begin = max(0, size - nbytes)
    f.seek(begin)
    data = f.read(size - begin)
    if begin > 0:
        nl = data.find(b"\n")
        begin, data = (begin + nl + 1, data[nl + 1:]) if nl >= 0 else (size, b"")
    nl = data.rfind(b"\n")
    block, last = (data[:nl], data[nl + 1:]) if nl >= 0 else (b"", data)
    return decode_block(block, stats) + decode_last(last, stats), begin


def scan(f, start: int, end: int, types: frozenset[str], stats: ReadStats | None = None) -> tuple[list, int]:
    """(events of `types` in the complete lines of [start, end), the offset after the last complete line).

    Lines are classified by their `"type"` bytes before any decoding, so a pass over a long log decodes only
    the few events asked for. `start` must be the start of a line; resume a growing log from the returned
    offset."""
    stats = stats if stats is not None else ReadStats()
    wanted = [f'"{t}"'.encode() for t in types]
    f.seek(start)
    pos, buf, out = start, b"", []
    while pos < end:
        chunk = f.read(min(CHUNK, end - pos))
        if not chunk:
            break
        pos += len(chunk)
        buf += chunk
        nl = buf.rfind(b"\n")
        if nl < 0:
            if len(buf) > MAX_LINE:  # one enormous line: never an event of interest
                buf = b""
            continue
        block, buf = buf[:nl], buf[nl + 1:]
        if any(w in block for w in wanted):
            for raw in block.split(b"\n"):
                if line_type(raw) in types:
                    ev = decode_line(raw, stats)
                    if ev is not None:
                        out.append(ev)
    return out, pos - len(buf)


def last_event(f, end: int, type_: str, chunk: int = 64 << 10):
    """The last valid event of `type_` that ends before `end`, reading backwards in `chunk`-byte steps."""
    pos, carry = end, b""
    while pos > 0:
        n = min(chunk, pos)
        pos -= n
        f.seek(pos)
        lines = (f.read(n) + carry).split(b"\n")
        carry = lines[0] if pos > 0 else b""
        for raw in reversed(lines[1:] if pos > 0 else lines):
            if line_type(raw) == type_:
                try:
                    ev = E.decode(raw)
                except E.NotAnEvent:
                    continue
                if ev.type == type_ and isinstance(ev, E.Event):
                    return ev
    return None
