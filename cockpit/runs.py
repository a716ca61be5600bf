"""The run index: every run under a runs directory, built from the event logs alone (no database to go stale).

A run is a directory holding `events.jsonl` directly under the runs root (default `./runs`, or the
`COCKPIT_RUNS` environment variable, or an explicit directory). For each log the index reads only what it
needs:

  head  the first event: `run_start` (preset, arch, params, config, start time, pid);
  tail  the last TAIL_BYTES, walked backwards: the `run_end` after the latest `run_start` (status, final
        step, best val loss, throughput, wall time) and, for a run without one, the last `step` and the
        recent throughput.

Only a run without `run_end` (running or killed) whose log is larger than the tail needs more: its best
val loss is the minimum over all `eval` events, found by a byte-level pass that JSON-parses only `eval`
and `run_start` lines, and that pass is incremental for a growing log (only the new bytes are read on the
next call). Lines are classified by their `"type"` bytes before any JSON parsing, so system, memory and
sample events cost nothing. A log up to WHOLE_BYTES is read in one go.

Status: `completed` / `stopped` / `failed` from `run_end`; without one, `running` while the trainer pid
of the latest `run_start` is alive (and is that trainer: a Python process that started before the run did,
not a reused pid) and `killed` once it is gone. `empty` is a log with no `run_start` yet; `unreadable`
one that cannot be opened.

Pure helpers for the browser: `sort_runs`, `filter_runs`, `run_cells` / `runs_table`, `config_diff`.
`delete_run` removes one run directory after checking it is a run directory directly under the root.
No torch, no Textual.
"""
from __future__ import annotations

import json
import math
import os
import re
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from common.fmt import fmt_count, fmt_duration, fmt_loss, fmt_rate
from common.paths import DEFAULT_ROOT, ENV_ROOT, LOG_NAME, runs_root
from common.procs import trainer_alive

TAIL_BYTES = 64 << 10      # how much of a log's end is read
WHOLE_BYTES = 128 << 10    # logs up to this size are read whole in one read
HEAD_LINES = 20            # how many leading lines may precede run_start (normally 0)
SCAN_CHUNK = 1 << 20

STATUSES = ("running", "completed", "stopped", "failed", "killed", "empty", "unreadable")
ENDED = ("completed", "stopped", "failed")
_TYPE = re.compile(rb'"type"\s*:\s*"([A-Za-z_]+)"')
_WANTED = {b"run_start", b"run_end", b"step", b"eval"}


class RunsError(ValueError):
    """A refused runs operation (bad directory, unsafe delete). str(e) is one line naming the fix."""


@dataclass
class RunInfo:
    path: Path                       # the run directory
    run_id: str | None = None
    preset: str | None = None
    arch: str | None = None
    status: str = "empty"
    steps: int = 0
    max_steps: int | None = None
    best_val: float | None = None
    throughput: float | None = None  # mean tokens/s (or items/s, see `unit`)
    params: int | None = None
    wall_time: float | None = None   # seconds
    started: float | None = None     # unix time of the first run_start
    config: dict = field(default_factory=dict)
    task: str | None = None
    unit: str = "tokens"
    device: str | None = None
    pid: int | None = None
    last_time: float | None = None   # unix time of the last event
    error: str | None = None         # first line of run_end's error, or why the log is unreadable
    size: int = 0                    # bytes of the log

    @property
    def log(self) -> Path:
        return self.path / LOG_NAME

    @property
    def name(self) -> str:
        return self.path.name

    def to_json(self) -> dict:
        d = asdict(self)
        d["path"] = str(self.path)
        d["log"] = str(self.log)
        for k in ("best_val", "throughput", "wall_time"):
            if isinstance(d[k], float) and not math.isfinite(d[k]):
                d[k] = None
        return d


# --- reading one log -----------------------------------------------------------------------------------

@dataclass
class _Digest:
    """What the index keeps of one log: everything but the pid-dependent status."""

    first_start: dict | None = None  # the head's run_start: the run's identity and start time
    last_start: dict | None = None   # the latest run_start (a resumed run appends one): its pid counts
    end: dict | None = None          # the run_end after the latest run_start
    last_step: dict | None = None
    tail_steps: list = field(default_factory=list)   # (units, seconds) of step events after last_start
    best_val: float | None = None
    best_known: bool = False         # best_val covers every eval (run_end's metric, or all lines seen)
    last_time: float | None = None
    scanned_to: int = 0              # eval / run_start lines in [0, scanned_to) are folded in
    region_best: float | None = None
    region_last_start: dict | None = None


def _sniff(raw: bytes) -> bytes | None:
    m = _TYPE.search(raw, 0, 96) or _TYPE.search(raw)
    return m.group(1) if m else None


def _parse(raw: bytes) -> dict | None:
    try:
        ev = json.loads(raw)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        return None
    return ev if isinstance(ev, dict) else None


def _num(x) -> float | None:
    if type(x) in (int, float):
        return float(x)
    if isinstance(x, str) and x in ("nan", "inf", "-inf"):
        return float(x)
    return None


def _min_val(best: float | None, ev: dict) -> float | None:
    v = _num(ev.get("val_loss"))
    if v is not None and math.isfinite(v) and (best is None or v < best):
        return v
    return best


def _read_tail(d: _Digest, lines: list[bytes], whole: bool):
    """Walk complete lines newest-first, stopping as soon as nothing more is needed."""
    seen_start = False
    for raw in reversed(lines):
        typ = _sniff(raw)
        if typ not in _WANTED:
            if d.last_time is None and typ is not None:
                ev = _parse(raw)
                d.last_time = _num(ev.get("time")) if ev else None
            continue
        ev = _parse(raw)
        if ev is None:
            continue
        if d.last_time is None:
            d.last_time = _num(ev.get("time"))
        if typ == b"run_end":
            if not seen_start and d.end is None and ev.get("status") in ENDED:
                d.end = ev
                m = ev.get("metrics") if isinstance(ev.get("metrics"), dict) else {}
                if "best_val_loss" in m:
                    bv = _num(m["best_val_loss"])   # the trainer's own best over every eval, resumes included
                    d.best_val = bv if bv is not None and math.isfinite(bv) else None
                    d.best_known = True
                    if not whole:
                        return
        elif typ == b"run_start":
            if not seen_start:
                seen_start = True
                d.last_start = ev
            d.first_start = ev  # walking backwards: the earliest one seen so far
        elif typ == b"step":
            if d.last_step is None and type(ev.get("step")) is int:
                d.last_step = ev
            if not seen_start and d.end is None:
                u = _num(ev.get("tokens", ev.get("items")))
                t = _num(ev.get("elapsed"))
                t = t if t is not None else _num(ev.get("time"))
                if u is not None and t is not None:
                    d.tail_steps.append((u, t))
        elif typ == b"eval":
            d.best_val = _min_val(d.best_val, ev)
    if whole:
        d.best_known = True


def _complete_lines(data: bytes, at_start: bool) -> list[bytes]:
    lines = data.split(b"\n")
    if not at_start:
        lines = lines[1:]  # the first piece is the end of a line that began before the tail
    if lines and lines[-1].strip() and _parse(lines[-1]) is None:
        lines.pop()        # a torn last line from a killed writer
    return [l for l in lines if l.strip()]


def _scan(f, d: _Digest, start: int, size: int):
    """Forward pass over [start, size) that classifies lines by their bytes and JSON-parses only eval and
    run_start lines; folds them into d.region_* and advances d.scanned_to past the last complete line."""
    f.seek(start)
    pos, buf = start, b""
    while pos < size:
        chunk = f.read(min(SCAN_CHUNK, size - pos))
        if not chunk:
            break
        pos += len(chunk)
        buf += chunk
        nl = buf.rfind(b"\n")
        if nl < 0:
            continue
        block, buf = buf[:nl], buf[nl + 1:]
        if b'"eval"' in block or b'"run_start"' in block:
            for raw in block.split(b"\n"):
                typ = _sniff(raw)
                if typ == b"eval" or typ == b"run_start":
                    ev = _parse(raw)
                    if ev is None:
                        continue
                    if typ == b"eval":
                        d.region_best = _min_val(d.region_best, ev)
                    else:
                        d.region_last_start = ev
    d.scanned_to = pos - len(buf)


def _head_start(f) -> dict | None:
    f.seek(0)
    for _ in range(HEAD_LINES):
        raw = f.readline(10 << 20)
        if not raw:
            return None
        if _sniff(raw) == b"run_start":
            return _parse(raw)
    return None


def _digest(log: Path, size: int, prev: _Digest | None) -> _Digest:
    d = _Digest()
    with open(log, "rb") as f:
        if size <= WHOLE_BYTES:
            _read_tail(d, _complete_lines(f.read(size), True), whole=True)
            return d
        f.seek(size - TAIL_BYTES)
        _read_tail(d, _complete_lines(f.read(TAIL_BYTES), False), whole=False)
        d.first_start = _head_start(f) or d.first_start
        if d.best_known:
            return d
        # No run_end with the best val (a running or killed run): every eval counts, and the pid of the
        # latest run_start, which may lie before the tail. A growing log continues where the last pass
        # stopped (a log only grows; a rewritten one has a new inode or a smaller size: start over).
        if prev is not None and prev.scanned_to <= size:
            d.scanned_to, d.region_best, d.region_last_start = prev.scanned_to, prev.region_best, prev.region_last_start
        _scan(f, d, d.scanned_to, size)
        if d.region_best is not None:
            d.best_val = d.region_best if d.best_val is None else min(d.best_val, d.region_best)
        d.best_known = True
        if d.last_start is None:
            d.last_start = d.region_last_start
        if d.first_start is None:
            d.first_start = d.last_start
        if d.last_step is None:
            d.last_step = _last_step_before(f, size)
    return d


def _last_step_before(f, end: int) -> dict | None:
    """The last step event before `end`, reading backwards in TAIL_BYTES chunks (for a tail with no step:
    a long eval, or a very verbose writer)."""
    pos, carry = end, b""
    while pos > 0:
        n = min(TAIL_BYTES, pos)
        pos -= n
        f.seek(pos)
        data = f.read(n) + carry
        lines = data.split(b"\n")
        carry = lines[0] if pos > 0 else b""
        for raw in reversed(lines[1:] if pos > 0 else lines):
            if _sniff(raw) == b"step":
                ev = _parse(raw)
                if ev is not None and type(ev.get("step")) is int:
                    return ev
    return None


_CACHE: dict[str, tuple[int, int, int, _Digest]] = {}


def read_run(log: str | Path) -> RunInfo:
    """The index entry of one run from its log (`runs/<run>/events.jsonl`, or the run directory)."""
    log = Path(log)
    if log.is_dir():
        log = log / LOG_NAME
    info = RunInfo(path=log.parent)
    key = str(log)
    try:
        st = os.stat(log)
        info.size = st.st_size
        cached = _CACHE.get(key)
        if cached is not None and cached[:3] == (st.st_ino, st.st_size, st.st_mtime_ns):
            d = cached[3]
        else:
            prev = cached[3] if cached is not None and cached[0] == st.st_ino and cached[1] <= st.st_size else None
            d = _digest(log, st.st_size, prev)
            _CACHE[key] = (st.st_ino, st.st_size, st.st_mtime_ns, d)
    except OSError as e:
        info.status, info.error = "unreadable", f"{e.strerror or e}"
        return info
    return _info_from(info, d)


def _info_from(info: RunInfo, d: _Digest) -> RunInfo:
    first, last, end = d.first_start, d.last_start or d.first_start, d.end
    if first is None:
        info.status = "empty"
        info.last_time = d.last_time
        return info
    info.run_id = _str(last.get("run_id")) or _str(first.get("run_id"))
    info.preset = _str(last.get("preset")) or _str(first.get("preset"))
    info.arch = _str(last.get("arch")) or _str(first.get("arch"))
    info.task = _str(last.get("task")) or _str(first.get("task"))
    info.device = _str(last.get("device"))
    info.unit = last.get("unit") if last.get("unit") in ("tokens", "items") else "tokens"
    cfg = last.get("config") if isinstance(last.get("config"), dict) else first.get("config")
    info.config = cfg if isinstance(cfg, dict) else {}
    n = last.get("n_params", first.get("n_params"))
    info.params = n if type(n) is int else None
    info.pid = last.get("pid") if type(last.get("pid")) is int else None
    info.started = _num(first.get("time"))
    info.last_time = d.last_time
    ms = None
    for src in (d.last_step or {}, last):
        if type(src.get("max_steps")) is int:
            ms = src["max_steps"]
            break
    if ms is None and isinstance(info.config.get("train"), dict) and type(info.config["train"].get("max_steps")) is int:
        ms = info.config["train"]["max_steps"]
    info.max_steps = ms
    if d.last_step is not None:
        info.steps = d.last_step["step"]
    info.best_val = d.best_val
    metrics = end.get("metrics") if end is not None and isinstance(end.get("metrics"), dict) else {}
    if end is not None:
        info.status = end["status"]
        if type(end.get("step")) is int:
            info.steps = end["step"]
        if isinstance(end.get("error"), str) and end["error"].strip():
            info.error = end["error"].strip().splitlines()[0]
    else:
        info.status = "running" if trainer_alive(info.pid, _num(last.get("time"))) else "killed"
    tp = _num(metrics.get("throughput"))
    if tp is None and len(d.tail_steps) >= 2:
        (u1, t1), (u0, t0) = d.tail_steps[0], d.tail_steps[-1]   # newest first
        tp = (u1 - u0) / (t1 - t0) if t1 > t0 else None
    if tp is None and d.last_step is not None:
        tp = _num(d.last_step.get("throughput"))
    info.throughput = tp
    wall = _num(metrics.get("wall_time"))
    if wall is None and info.started is not None and d.last_time is not None:
        wall = max(0.0, d.last_time - info.started)
    info.wall_time = wall
    return info


def _str(x) -> str | None:
    return x if isinstance(x, str) and x else None


# --- the index -----------------------------------------------------------------------------------------

def find_logs(root: str | Path) -> list[Path]:
    """`<root>/*/events.jsonl`, one level deep. A missing root has no runs."""
    out = []
    try:
        entries = list(os.scandir(root))
    except (FileNotFoundError, NotADirectoryError):
        return []
    for e in entries:
        try:
            if e.is_dir():
                log = Path(e.path) / LOG_NAME
                if log.is_file():
                    out.append(log)
        except OSError:
            continue
    return out


def index_runs(root: str | Path | None = None) -> list[RunInfo]:
    """Every run under `root` (see `runs_root`), newest first."""
    runs = [read_run(log) for log in find_logs(runs_root(root))]
    return sort_runs(runs, "started", reverse=True)


# --- pure helpers for the browser ----------------------------------------------------------------------

# (RunInfo attribute, column title); the browser's columns, in order
COLUMNS = [
    ("preset", "preset"), ("arch", "arch"), ("status", "status"), ("steps", "steps"),
    ("best_val", "best val"), ("throughput", "tok/s"), ("params", "params"), ("wall_time", "wall"),
    ("started", "started"), ("run_id", "run"),
]
SORT_KEYS = tuple(k for k, _ in COLUMNS) + ("name", "task", "device", "size", "last_time")
_TEXT_FIELDS = ("run_id", "preset", "arch", "status", "task", "device", "name")


def _sort_value(r: RunInfo, key: str):
    v = getattr(r, key) if key in SORT_KEYS else None
    if isinstance(v, str):
        return v.lower()
    if isinstance(v, float) and math.isnan(v):
        return None
    return v


def sort_runs(runs: list[RunInfo], key: str = "started", reverse: bool = False) -> list[RunInfo]:
    """A sorted copy; runs missing the value (None, NaN) always go last, in either direction."""
    if key not in SORT_KEYS:
        raise RunsError(f"cannot sort by {key!r}; use one of {', '.join(SORT_KEYS)}")
    have = [r for r in runs if _sort_value(r, key) is not None]
    missing = [r for r in runs if _sort_value(r, key) is None]
    have.sort(key=lambda r: (_sort_value(r, key), r.name), reverse=reverse)
    return have + missing


def flatten(cfg: dict, prefix: str = "") -> dict:
    """{"model": {"n_layer": 2}} -> {"model.n_layer": 2}; lists stay values."""
    out = {}
    for k, v in cfg.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


_COND = re.compile(r"^([A-Za-z_][\w.\-/]*)(<=|>=|<|>|=|:)(.*)$")


def _field(r: RunInfo, name: str):
    if name in SORT_KEYS or name in _TEXT_FIELDS or name in ("best_val", "params", "pid"):
        return True, getattr(r, name)
    aliases = {"val": "best_val", "tok/s": "throughput", "wall": "wall_time", "run": "run_id"}
    if name in aliases:
        return True, getattr(r, aliases[name])
    flat = flatten(r.config)
    if name in flat:
        return True, flat[name]
    return False, None


def _term_matches(r: RunInfo, term: str) -> bool:
    m = _COND.match(term)
    if m:
        known, value = _field(r, m.group(1))
        if known:
            op, want = m.group(2), m.group(3)
            if op == ":":
                return want.lower() in str(value).lower() if value is not None else want == ""
            num = _num(value) if not isinstance(value, bool) else None
            try:
                w = float(want)
            except ValueError:
                return op == "=" and str(value).lower() == want.lower()
            if num is None:
                return False
            return {"<": num < w, ">": num > w, "<=": num <= w, ">=": num >= w, "=": num == w}[op]
    t = term.lower()
    return any(t in str(getattr(r, f) or "").lower() for f in _TEXT_FIELDS)


def filter_runs(runs: list[RunInfo], query: str) -> list[RunInfo]:
    """Runs matching every whitespace-separated term of `query`:
    `word` (substring of run id, preset, arch, status, task, device or directory name, any case),
    `field:text` (substring of that field, config keys included: `model.n_layer:2`),
    `field<n`, `field>n`, `field<=n`, `field>=n`, `field=n` (numeric: `best_val<1.5`, `steps>=1000`)."""
    terms = query.split()
    return [r for r in runs if all(_term_matches(r, t) for t in terms)]


def fmt_started(t: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(t)) if t is not None else "-"


def run_cells(r: RunInfo) -> list[str]:
    """One run as the browser's text cells, in COLUMNS order."""
    steps = f"{r.steps}/{r.max_steps}" if r.max_steps else str(r.steps)
    rate = fmt_rate(r.throughput) + ("" if r.unit == "tokens" or r.throughput is None else " it")
    return [r.preset or "?", r.arch or "?", r.status, steps, fmt_loss(r.best_val), rate,
            fmt_count(r.params), fmt_duration(r.wall_time), fmt_started(r.started), r.run_id or r.name]


def runs_table(runs: list[RunInfo]) -> str:
    header = [t for _, t in COLUMNS]
    rows = [run_cells(r) for r in runs]
    numeric = {"steps", "best val", "tok/s", "params", "wall"}
    widths = [max([len(header[i])] + [len(row[i]) for row in rows]) for i in range(len(header))]

    def line(cells):
        return "  ".join(c.rjust(w) if h in numeric else c.ljust(w)
                         for c, w, h in zip(cells, widths, header)).rstrip()
    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])


def config_diff(configs: list[dict | None]) -> dict[str, list]:
    """Dotted keys whose values differ between the configs (a key missing from one counts as None),
    each with the list of values in the configs' order. Keys appear in first-seen order."""
    flats = [flatten(c) if isinstance(c, dict) else {} for c in configs]
    keys: dict[str, None] = {}
    for f in flats:
        keys.update(dict.fromkeys(f))
    out = {}
    for k in keys:
        vals = [f.get(k) for f in flats]
        canon = {json.dumps(v, sort_keys=True, default=str) + type(v).__name__ for v in vals}
        if len(canon) > 1:
            out[k] = vals
    return out


# --- deleting ------------------------------------------------------------------------------------------

def delete_run(path: str | Path, root: str | Path | None = None) -> Path:
    """Remove one run directory (its log, checkpoints, samples) and return it. Refuses (RunsError) anything
    but a real directory directly under the runs root that holds an events.jsonl, and a run whose trainer
    is still alive."""
    root_p = runs_root(root)
    p = Path(path)
    if p.name == LOG_NAME and p.is_file():
        p = p.parent
    try:
        real_root = root_p.resolve(strict=True)
    except (OSError, RuntimeError):
        raise RunsError(f"{root_p}: the runs directory does not exist; nothing to delete") from None
    if p.is_symlink():
        raise RunsError(f"{path}: is a symbolic link, not a run directory; delete it by hand if you mean to")
    try:
        real = p.resolve(strict=True)
    except (OSError, RuntimeError):
        raise RunsError(f"{path}: no such run directory") from None
    if real.parent != real_root or not real.is_dir():
        raise RunsError(f"{path}: is not a run directory directly under {root_p}; refusing to delete it")
    if not (real / LOG_NAME).is_file():
        raise RunsError(f"{path}: has no {LOG_NAME}, so it is not a run directory; refusing to delete it")
    info = read_run(real / LOG_NAME)
    if info.status == "running":
        raise RunsError(f"{path}: the run is still running (pid {info.pid}); stop it before deleting it")
    shutil.rmtree(real)
    _CACHE.pop(str(p / LOG_NAME), None)
    _CACHE.pop(str(real / LOG_NAME), None)
    return real
