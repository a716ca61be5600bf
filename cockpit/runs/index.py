"""The run index: a RunInfo per run directory under a runs root, folded from each log by the shared reader
(common/reader.py) and reducer (common/state.py), reading only what it needs:

  a log up to WHOLE_BYTES       read whole and folded;
  a longer log that ended       its first run_start (the run's identity and start) and its last TAIL_BYTES,
                                whose run_end carries the trainer's best val loss over every eval;
  a longer log without run_end  (running, or killed) the same, plus every run_start and eval before the tail
                                (classified by their bytes, the other lines never decoded), so that the best
                                val loss and the pid of the latest run_start are right; a growing log is
                                scanned on from where the last pass stopped.

Status: completed / stopped / failed from run_end; without one, `running` while the trainer of the latest
run_start is alive (common/procs.py) and `killed` once it is gone; `empty` for a log with no run_start yet,
`unreadable` for one that cannot be opened. Folded states are cached by (inode, size, mtime): re-indexing
an unchanged runs directory only re-checks which trainers are alive.

A directory of TensorBoard event files is a run too (common/tfevents.py): its files are followed, each pass
reading only what they gained since the last.
"""
from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from cockpit.runs.query import sort_runs
from common import events as E
from common import tfevents
from common.cli import BadInput
from common.paths import LOG_NAME, runs_root
from common.procs import trainer_alive
from common.reader import ReadStats, decode_line, last_event, read_tail, scan
from common.state import RunState, fold_available

TAIL_BYTES = 64 << 10      # how much of a long log's end is read
WHOLE_BYTES = 128 << 10    # logs up to this size are read whole
HEAD_LINES = 20            # how many leading lines may precede run_start (normally 0)
SCANNED = frozenset({"run_start", "eval"})


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
    tensorboard: bool = False        # a directory of TensorBoard event files (common/tfevents.py)

    @property
    def log(self) -> Path:
        """What `cockpit watch` and `--replay` take: the log, or a TensorBoard run's directory."""
        return self.path if self.tensorboard else self.path / LOG_NAME

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
    """What the index keeps of one log: its folded state, and for a long log without run_end the run_start
    and eval events before its tail with the offset the next pass continues from."""

    state: RunState
    region: list = field(default_factory=list)
    scanned_to: int = 0


def _head_start(f) -> E.RunStart | None:
    """The run_start among the first HEAD_LINES lines."""
    f.seek(0)
    for _ in range(HEAD_LINES):
        raw = f.readline(10 << 20)
        if not raw:
            return None
        ev = decode_line(raw.rstrip(b"\n"), ReadStats())
        if isinstance(ev, E.RunStart):
            return ev
    return None


def _ended(tail: list) -> bool:
    """The tail holds the run_end of the latest segment (after the last run_start it holds), with the
    trainer's best val loss over every eval."""
    last_start = max((i for i, ev in enumerate(tail) if isinstance(ev, E.RunStart)), default=-1)
    return any(isinstance(ev, E.RunEnd) and "best_val_loss" in ev.metrics for ev in tail[last_start + 1:])


def _digest(log: Path, size: int, prev: _Digest | None) -> _Digest:
    with open(log, "rb") as f:
        if size <= WHOLE_BYTES:
            events, _ = read_tail(f, size, size)
            return _Digest(RunState().apply_all(events))
        tail, tail_at = read_tail(f, size, TAIL_BYTES)
        if _ended(tail):
            head = _head_start(f)
            return _Digest(RunState().apply_all(([head] if head is not None else []) + tail))
        # No run_end with the best val: every eval counts, and the pid of the latest run_start, which may lie
        # before the tail. A log only grows; a rewritten one has a new inode or a smaller size (start over).
        region, start = [], 0
        if prev is not None and prev.scanned_to <= tail_at:
            region, start = prev.region, prev.scanned_to
        found, scanned_to = scan(f, start, tail_at, SCANNED)
        region = region + found
        before = []
        if not any(isinstance(ev, E.Step) for ev in tail):  # a long eval, or a very verbose writer
            step = last_event(f, tail_at, "step")
            before = [step] if step is not None else []
        return _Digest(RunState().apply_all(region + before + tail), region, scanned_to)


_CACHE: dict[str, tuple[int, int, int, _Digest]] = {}


def read_run(log: str | Path) -> RunInfo:
    """The index entry of one run from its log (`runs/<run>/events.jsonl`, or the run directory; or a
    directory of TensorBoard event files)."""
    log = Path(log)
    if log.is_dir() and tfevents.tensorboard_run(log) is not None:
        return read_tensorboard_run(log)
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
    return _info_from(info, d.state)


_FOLLOWED: dict[str, tuple[tfevents.TfEventsFollower, RunState]] = {}


def read_tensorboard_run(directory: Path) -> RunInfo:
    """The index entry of a TensorBoard run: its files are followed from where the last pass stopped (a pass
    over an unchanged run reads nothing; its end is the follower's to tell, from its writer's process)."""
    info = RunInfo(path=directory, tensorboard=True)
    key = str(directory)
    try:
        info.size = sum(p.stat().st_size for p in tfevents.event_files(directory))
        if key not in _FOLLOWED:
            _FOLLOWED[key] = (tfevents.TfEventsFollower(directory), RunState())
        follower, state = _FOLLOWED[key]
        fold_available(follower.poll, state)
    except (OSError, BadInput) as e:  # BadInput: the tensorboard extra is missing
        info.status, info.error = "unreadable", str(e.strerror if isinstance(e, OSError) else e)
        return info
    info = _info_from(info, state)
    if state.counts.get("run_start") and state.end is None:
        info.status = "running"   # no end yet: the follower saw its writer alive
    return info


def _info_from(info: RunInfo, s: RunState) -> RunInfo:
    info.last_time = s.last_time
    if not s.counts.get("run_start"):
        return info  # empty: no run_start yet
    info.run_id, info.preset, info.arch, info.task = s.run_id, s.preset, s.arch, s.task
    info.device, info.unit, info.config, info.params, info.pid = s.device, s.unit, s.config, s.n_params, s.pid
    info.started = s.start_time
    info.steps, info.max_steps = s.step, s.max_steps
    bests = [b for b in (s.end_metric("best_val_loss"), s.best_val) if b is not None and math.isfinite(b)]
    info.best_val = min(bests) if bests else None
    if s.end is not None:
        info.status = s.status
        if s.error and s.error.strip():
            info.error = s.error.strip().splitlines()[0]
    else:
        info.status = "running" if trainer_alive(s.pid, s.run_started) else "killed"
    info.throughput = s.mean_throughput()
    wall = s.wall_time()
    info.wall_time = max(0.0, wall) if wall is not None else None
    return info


# --- the index -----------------------------------------------------------------------------------------

def find_logs(root: str | Path) -> list[Path]:
    """`<root>/*/events.jsonl`, one level deep, and `<root>/*/` holding TensorBoard event files (Hugging Face's
    Trainer logs into output_dir/runs/<date>_<host>/: `cockpit runs --dir output_dir/runs`). A missing root
    has no runs."""
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
                elif tfevents.event_files(e.path):   # a TensorBoard run: the directory stands for its log
                    out.append(Path(e.path))
        except OSError:
            continue
    return out


def index_runs(root: str | Path | None = None) -> list[RunInfo]:
    """Every run under `root` (see common.paths.runs_root), newest first."""
    runs = [read_run(log) for log in find_logs(runs_root(root))]
    return sort_runs(runs, "started", reverse=True)


def forget(log: str | Path) -> None:
    """Drop a log's cached digest (its run directory was deleted)."""
    _CACHE.pop(str(log), None)
    _FOLLOWED.pop(str(log), None)
