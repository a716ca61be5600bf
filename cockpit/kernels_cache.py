"""The kernels panel's results, kept between openings: `kernels.json` in the cockpit's cache directory
(common.paths.cache_dir), so that reopening the panel shows the last comparison at once instead of running
the benchmark again.

Each result is a `kernel` event (docs/events.md) stored with the host it was measured on and a fingerprint
of its kernel's source. Results are keyed by (kernel, shape, dtype, backend, machine), the machine being the
host and the device: a new measurement replaces the one of the same key. The panel shows a result again only
on the same host and while the kernel's code is unchanged. The file is only a cache: a missing, unreadable,
corrupt or foreign file is ignored with one note (and replaced by the next measurement), a result that does
not validate is skipped, and a failed write costs a note, never the panel.
"""
from __future__ import annotations

import hashlib
import json
import platform
import stat
import time
from dataclasses import dataclass
from pathlib import Path

from common import events as E
from common.atomic import NotAFileTarget, describe, write_atomic
from common.paths import cache_dir

FILE_NAME = "kernels.json"
KIND = "cockpit kernels results"
VERSION = 1
# Results of every kernel, shape and dtype on a handful of machines take tens of KiB; a file this big is
# not one this module wrote, and is not read into memory.
MAX_BYTES = 16 << 20
# What a kernel's results depend on besides its own file: the harness that checks and times it, and the
# Triton set-up every kernel imports.
SHARED_SOURCES = ("_harness.py", "_triton.py")


def cache_path() -> Path:
    return cache_dir() / FILE_NAME


def this_host() -> str:
    return platform.node() or "localhost"


def source_fingerprint(name: str) -> str:
    """A hash of the files kernel `name`'s results depend on; a changed kernel no longer matches its old
    results. Read as text from the kernels package (no torch): the UI process computes it."""
    import kernels

    root = Path(kernels.__file__).resolve().parent
    module = kernels.MODULES.get(name)
    h = hashlib.sha1(name.encode())
    for file in ((f"{module}.py",) if module else ()) + SHARED_SOURCES:
        try:
            h.update((root / file).read_bytes())
        except OSError as e:  # an unreadable source matches nothing cached before it became unreadable
            h.update(f"{file}: {e.strerror}".encode())
    return h.hexdigest()[:16]


def result_key(ev: dict, host: str) -> tuple:
    """(kernel, shape, dtype, backend, machine) of one result; the machine is the host and the device."""
    return (ev.get("name"), tuple(ev.get("shape") or ()), ev.get("dtype"), ev.get("backend"),
            host, ev.get("device"))


@dataclass
class Cached:
    events: list[dict]        # this host's results of unchanged kernels, as `kernel` event dicts
    saved_at: float | None    # when the newest of them was measured (unix seconds)
    note: str | None          # what was ignored, and why; None when nothing was


def _read(path: Path) -> tuple[list, str | None]:
    """The stored entries (unvalidated) and a note on why the file was ignored, if it was."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return [], None
    except OSError as e:
        return [], f"ignored the kernels cache {path}: {describe(e)}"
    if not stat.S_ISREG(st.st_mode):  # a FIFO would block the read, a directory cannot be read
        return [], f"ignored the kernels cache {path}: it is not a regular file"
    if st.st_size > MAX_BYTES:
        return [], f"ignored the kernels cache {path}: {st.st_size} bytes is not a results file of the cockpit"
    try:
        data = json.loads(path.read_bytes())
    except OSError as e:
        return [], f"ignored the kernels cache {path}: {describe(e)}"
    except (ValueError, RecursionError):  # not JSON, not UTF-8, nested too deeply
        return [], f"ignored the kernels cache {path}: it is not JSON (it is replaced when the comparison runs)"
    if not isinstance(data, dict) or data.get("kind") != KIND:
        return [], f"ignored the kernels cache {path}: it is not a results file of the cockpit"
    if data.get("version") != VERSION or not isinstance(data.get("results"), list):
        return [], f"ignored the kernels cache {path}: written by another version of the cockpit"
    return data["results"], None


def _valid(entry) -> dict | None:
    """The `kernel` event dict of one stored entry, or None when the entry or its event does not validate."""
    if not isinstance(entry, dict) or not isinstance(entry.get("event"), dict):
        return None
    if not all(isinstance(entry.get(k), str) for k in ("host", "source")):
        return None
    if not isinstance(entry.get("saved"), (int, float)) or isinstance(entry.get("saved"), bool):
        return None
    try:
        ev = E.convert({**entry["event"], "type": "kernel"})
    except E.NotAnEvent:
        return None
    return E.as_dict(ev) if isinstance(ev, E.Kernel) else None


def load(path: Path | None = None) -> Cached:
    """This host's cached results of kernels whose code is unchanged, and a note on anything ignored."""
    path = path or cache_path()
    entries, note = _read(path)
    events, saved, bad, stale, host = [], None, 0, 0, this_host()
    fingerprints: dict[str, str] = {}
    for entry in entries:
        ev = _valid(entry)
        if ev is None:
            bad += 1
        elif entry["host"] != host:
            continue
        elif entry["source"] != fingerprints.setdefault(ev["name"], source_fingerprint(ev["name"])):
            stale += 1
        else:
            events.append(ev)
            saved = max(saved or 0.0, float(entry["saved"]))
    notes = [note] if note else []
    if bad:
        notes.append(f"{bad} unreadable result(s) in {path} ignored")
    if stale:
        notes.append(f"{stale} cached result(s) not shown: their kernels' code changed since")
    return Cached(events, saved, "; ".join(notes) or None)


def save(new: list[dict], path: Path | None = None) -> str | None:
    """Store `new` results (kernel event dicts measured on this host), replacing those of the same key and
    keeping the rest; a note when the file could not be written, else None."""
    path = path or cache_path()
    host, now = this_host(), time.time()
    keys = {result_key(ev, host) for ev in new}
    entries, _ = _read(path)  # an unreadable file is replaced
    kept = []
    for entry in entries:
        ev = _valid(entry)
        if ev is not None and result_key(ev, entry["host"]) not in keys:
            kept.append(entry)
    fingerprints: dict[str, str] = {}
    for ev in new:
        fields = {k: v for k, v in ev.items() if k not in ("type", "v", "time")}
        try:  # the protocol's own encoding: validated, non-finite errors written as "inf"
            event = json.loads(E.encode("kernel", fields, ev.get("time") or now))
        except E.ProtocolError:
            continue
        name = str(ev.get("name"))
        source = fingerprints.setdefault(name, source_fingerprint(name))
        kept.append({"host": host, "source": source, "saved": now, "event": event})
    try:
        write_atomic(path, json.dumps({"kind": KIND, "version": VERSION, "results": kept}))
    except NotAFileTarget as e:
        return f"kernels cache not written: {e}"
    except OSError as e:
        return f"kernels cache {path} not written: {describe(e)}"
    return None
