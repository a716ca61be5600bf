"""The reducer: one function folds events into RunState. The run screen, `watch`, `--replay`, the comparison,
the runs index and the trainer's headless progress lines all use it.

`RunState.apply(event)` never raises: events come typed from the protocol (common/events.py); a dict is
converted first. An event of a known type with missing or mistyped fields (Invalid) is counted in
`bad_events`, one of an unknown type in `unknown_types`. Steps that go backwards (a resumed run re-doing steps
after its last checkpoint, or a log spliced out of order) replace the later points, so the curves always
read left to right.

"Fold the log, then decide whether the run was killed" is `load_state` (a whole log) and `settle` (a state
folded so far, e.g. a watched log whose writer may have died): a run without run_end whose trainer is gone
was killed (common/procs.py decides "gone").
"""
from __future__ import annotations

import bisect
import contextlib
import gc
import math
from collections import deque
from dataclasses import dataclass, field

from common import events as E
from common.procs import trainer_alive
from common.reader import read_blocks

THERMAL_THROTTLE = ("hw_thermal", "sw_thermal", "hw_slowdown", "hw_power_brake")
MAX_UNKNOWN_TYPES = 20        # unknown event types counted by name; more are counted together as OTHER_TYPES
OTHER_TYPES = "(other types)"
MAX_METRICS = 32              # eval metrics charted by name; a log inventing more has the rest counted, not kept
MAX_INTERNALS = 40            # internals probes kept (the newest): the internals view steps through them


def number(x) -> float | None:
    """A numeric value of a free-form field (metrics, a config) as a float; None when absent, not a number,
    or an int beyond the float range."""
    if type(x) is float:
        return x
    if type(x) is int:
        try:
            return float(x)
        except OverflowError:
            return None
    return None


@dataclass
class Curve:
    """Parallel columns of one curve: step, value, units (tokens/items) and elapsed seconds."""

    steps: list = field(default_factory=list)
    values: list = field(default_factory=list)
    units: list = field(default_factory=list)
    times: list = field(default_factory=list)

    def append(self, step, value, units, t):
        self.steps.append(step)
        self.values.append(value)
        self.units.append(units)
        self.times.append(t)

    def truncate_from(self, step) -> int:
        """Drop points with step >= `step`; returns how many were dropped."""
        i = bisect.bisect_left(self.steps, step)
        n = len(self.steps) - i
        if n:
            del self.steps[i:], self.values[i:], self.units[i:], self.times[i:]
        return n

    def __len__(self):
        return len(self.steps)

    def x(self, axis: str) -> list:
        return {"step": self.steps, "tokens": self.units, "time": self.times}[axis]


@dataclass
class RunState:
    # identity (run_start)
    run_id: str | None = None
    preset: str | None = None
    arch: str | None = None
    task: str | None = None
    config: dict = field(default_factory=dict)
    dataset: dict | None = None          # what a language model trains on (run_start)
    n_params: int | None = None
    device: str | None = None
    profile: str | None = None
    pid: int | None = None
    unit: str = "tokens"
    max_steps: int | None = None
    world_size: int = 1
    start_time: float | None = None
    run_started: float | None = None     # time of the latest run_start (a resume starts a new segment)
    last_time: float | None = None
    # progress
    status: str = "waiting"     # waiting, running, paused, completed, stopped, failed, killed
    step: int = 0
    loss: float | None = None
    lr: float | None = None
    grad_norm: float | None = None
    throughput: float | None = None
    units_seen: float = 0
    elapsed: float = 0.0
    train: Curve = field(default_factory=Curve)
    val: Curve = field(default_factory=Curve)
    segment_start: int = 0                                # first train point of the latest run_start
    lrs: list = field(default_factory=list)          # lr of each train point (NaN where a step had none)
    grad_norms: list = field(default_factory=list)   # grad norm of each train point (NaN where none)
    rates: list = field(default_factory=list)        # throughput of each train point (NaN where none)
    paused_at: list = field(default_factory=list)    # seconds the run had been paused by each train point
    paused_total: float = 0.0                        # seconds paused so far (pause → resume acknowledgements)
    paused_since: float | None = None                # time of the pause acknowledgement while paused
    metrics: dict = field(default_factory=dict)      # eval metric name -> Curve (accuracy, balance_loss ...)
    dropped_metrics: int = 0                         # metric names past MAX_METRICS, counted
    best_val: float | None = None
    best_val_step: int | None = None
    last_eval: E.Eval | None = None
    experts: dict | None = None
    samples: list = field(default_factory=list)          # Sample events, oldest first
    memory: E.Memory | None = None
    memory_history: list = field(default_factory=list)   # (step, totals)
    system: E.System | None = None
    gpu_util_history: deque = field(default_factory=lambda: deque(maxlen=120))
    gpu_mem_history: deque = field(default_factory=lambda: deque(maxlen=120))
    cpu_util_history: deque = field(default_factory=lambda: deque(maxlen=120))
    throttle_steps: list = field(default_factory=list)
    checkpoints: list = field(default_factory=list)      # (step, path)
    kernels: dict = field(default_factory=dict)          # (name, shape, dtype) -> Kernel event
    internals: deque = field(default_factory=lambda: deque(maxlen=MAX_INTERNALS))  # Internals events, oldest first
    logs: deque = field(default_factory=lambda: deque(maxlen=500))
    skipped_steps: list = field(default_factory=list)    # steps whose update was skipped (non-finite)
    resumes: list = field(default_factory=list)          # steps a resume continued from
    end: E.RunEnd | None = None
    error: str | None = None
    exit_code: int | None = None
    # bookkeeping
    events: int = 0
    bad_events: int = 0
    unknown_types: dict = field(default_factory=dict)
    skipped_lines: int = 0      # lines the log's reader skipped (not JSON, over 10 MB ...), noted by the screen
    out_of_order: int = 0
    counts: dict = field(default_factory=dict)           # event type -> how many were folded
    version: int = 0
    max_samples: int = 500

    # --- the reducer ---------------------------------------------------------------------------------
    def apply(self, ev) -> None:
        if isinstance(ev, dict):
            try:
                ev = E.convert(ev)
            except E.NotAnEvent:
                pass  # counted below as a bad event
        if ev.__class__ is E.Step:
            _fold_steps(self, (ev,), 0)
            return
        self.events += 1
        self.version += 1
        entry = _HANDLERS.get(ev.__class__)
        if entry is None:
            if isinstance(ev, E.Unknown):
                t = ev.type[:40]
                if t not in self.unknown_types and len(self.unknown_types) >= MAX_UNKNOWN_TYPES:
                    t = OTHER_TYPES  # a log of a million made-up types is one line of notes, not a million
                self.unknown_types[t] = self.unknown_types.get(t, 0) + 1
            else:  # Invalid, or not an event at all
                self.bad_events += 1
            return
        kind, handler = entry
        self.counts[kind] = self.counts.get(kind, 0) + 1
        t = ev.time
        if t is not None:
            if self.start_time is None:
                self.start_time = t
            self.last_time = t
        try:
            handler(self, ev)
        except (KeyError, TypeError, ValueError, AttributeError, IndexError):
            self.bad_events += 1

    def apply_all(self, events) -> "RunState":
        """apply() each event in turn; a run of step events (most of a long log) in one go."""
        evs = events if isinstance(events, (list, tuple)) else list(events)
        i, n, Step = 0, len(evs), E.Step
        while i < n:
            if evs[i].__class__ is Step:
                i = _fold_steps(self, evs, i)
            else:
                self.apply(evs[i])
                i += 1
        return self

    # --- derived -------------------------------------------------------------------------------------
    @property
    def ended(self) -> bool:
        return self.end is not None

    def ignored(self) -> int:
        """Lines and events of the log that were counted and skipped: bad events, unknown types, bad lines."""
        return self.bad_events + sum(self.unknown_types.values()) + self.skipped_lines

    def _segment(self) -> int:
        """Index of the first train point of the latest segment (the trainer of an older log restarted
        `elapsed` at a resume; rates are taken within a segment either way)."""
        return min(self.segment_start, max(0, len(self.train) - 1))

    def eta(self) -> float | None:
        """Seconds left, from the step rate over the latest segment's logged curve."""
        i = self._segment()
        if not self.max_steps or len(self.train) - i < 2 or self.status not in ("running", "paused"):
            return None
        s0, s1 = self.train.steps[i], self.train.steps[-1]
        # time spent paused is not training time: the rate leaves it out, so a pause never grows the ETA
        t0 = self.train.times[i] - self.paused_at[i]
        t1 = self.train.times[-1] - self.paused_at[-1]
        if s1 <= s0 or t1 <= t0:
            return None
        return (t1 - t0) / (s1 - s0) * max(0, self.max_steps - max(s1, self.step))

    def progress(self) -> float | None:
        """Share of max_steps done (0..1), from the step the trainer last reported or acknowledged."""
        if not self.max_steps:
            return None
        return min(1.0, max(0.0, self.step / self.max_steps))

    def end_metric(self, name: str) -> float | None:
        """A numeric metric of run_end (best_val_loss, throughput, wall_time, peak_allocated ...)."""
        return number(self.end.metrics.get(name)) if self.end is not None else None

    def mean_throughput(self) -> float | None:
        tp = self.end_metric("throughput")
        if tp is not None:
            return tp
        i, units, times = self._segment(), self.train.units, self.train.times
        if len(times) - i >= 2 and times[-1] > times[i] and units[-1] > units[i]:  # a log without tokens: none
            return (units[-1] - units[i]) / (times[-1] - times[i])
        return self.throughput

    def wall_time(self) -> float | None:
        w = self.end_metric("wall_time")
        if w is not None:
            return w
        i, times = self.segment_start, self.train.times
        if self.resumes and 0 < i < len(times) and times[i] >= times[i - 1]:
            return self.elapsed  # a resumed trainer counts on from its checkpoint: the downtime is not the run's
        if self.start_time is not None and self.last_time is not None:
            return self.last_time - self.start_time
        return None

    def note_output(self, lines) -> None:
        """Lines the trainer printed outside the protocol (its stderr/stdout file, trainer.out: warnings, a
        traceback) join the log lines, as level "output"."""
        n = 0
        for line in lines:
            self.logs.append(("output", line))
            n += 1
        if n:
            self.counts["output"] = self.counts.get("output", 0) + n
            self.version += 1

    def mark_killed(self):
        """A log with no run_end whose trainer is gone: the run was killed."""
        if self.end is None and self.status in ("running", "paused", "waiting"):
            self.status = "killed"
            self.version += 1


def _run_start(s: RunState, ev: E.RunStart):
    resumed = ev.resumed_from
    if resumed is not None:
        s.resumes.append(resumed)
        s.train.truncate_from(resumed + 1)
        _trim_columns(s)
        _truncate_evals(s, resumed + 1)
        s.end = None
        s.error = None
        while s.internals and s.internals[-1].step > resumed:  # the resumed trainer probes those steps again
            s.internals.pop()
    s.segment_start = len(s.train)
    s.paused_since = None  # a new trainer process starts unpaused
    for name in ("run_id", "preset", "arch", "task", "n_params", "device", "profile", "pid", "unit", "dataset"):
        value = getattr(ev, name)
        if value is not None:
            setattr(s, name, value)
    if ev.config is not None:
        s.config = ev.config
    if ev.max_steps is not None:
        s.max_steps = ev.max_steps
    elif isinstance(s.config.get("train"), dict) and type(s.config["train"].get("max_steps")) is int:
        s.max_steps = s.config["train"]["max_steps"]
    s.world_size = ev.world_size
    if ev.time is not None:
        s.run_started = ev.time
    s.status = "running"


def _trim_columns(s: RunState):
    """The per-point columns beside the train curve keep its length after it was truncated."""
    n = len(s.train.steps)
    del s.lrs[n:], s.grad_norms[n:], s.rates[n:], s.paused_at[n:]


def _truncate_evals(s: RunState, step: int):
    """Drop the val points and eval metric points with step >= `step` (re-done steps come again)."""
    s.val.truncate_from(step)
    for curve in s.metrics.values():
        curve.truncate_from(step)


def _fold_steps(s: RunState, evs, i: int) -> int:
    """Fold the run of step events that starts at evs[i]; returns the index after it. Each step is a point on
    the train curve (a step that goes backwards first drops the points from it on); the latest values (step,
    loss, lr ...) come from the last of the run. The hot loop of a replay: locals, no calls."""
    Step, start, end = E.Step, i, len(evs)
    train, lrs, grads, rates, paused_at = s.train, s.lrs, s.grad_norms, s.rates, s.paused_at
    steps, values, units_col, times = train.steps, train.values, train.units, train.times
    paused, nan = s.paused_total, math.nan
    if s.start_time is None:
        s.start_time = evs[i].time
    t0, last = s.start_time, (steps[-1] if steps else None)
    throughput, max_steps = s.throughput, s.max_steps
    while i < end:
        ev = evs[i]
        if ev.__class__ is not Step:
            break
        step = ev.step
        if last is not None and step <= last:
            s.out_of_order += 1
            train.truncate_from(step)
            _trim_columns(s)
            _truncate_evals(s, step + 1)
        units = ev.tokens
        if units is None:
            units = ev.items
            if units is None:
                units = units_col[-1] if units_col else 0.0
        el = ev.elapsed
        if el is None:
            el = ev.time - t0 if t0 is not None and ev.time is not None else 0.0
        steps.append(step)
        values.append(ev.loss)
        units_col.append(units)
        times.append(el)
        lrs.append(ev.lr if ev.lr is not None else nan)
        grads.append(ev.grad_norm if ev.grad_norm is not None else nan)
        rates.append(ev.throughput if ev.throughput is not None else nan)
        paused_at.append(paused)
        if ev.throughput is not None:
            throughput = ev.throughput
        if ev.max_steps is not None:
            max_steps = ev.max_steps
        last = step
        i += 1
    n, ev = i - start, evs[i - 1]
    s.events += n
    s.version += n
    s.counts["step"] = s.counts.get("step", 0) + n
    if ev.time is not None:
        s.last_time = ev.time
    s.step, s.loss, s.lr, s.grad_norm = ev.step, ev.loss, ev.lr, ev.grad_norm
    s.units_seen, s.elapsed = units_col[-1], times[-1]
    s.throughput, s.max_steps = throughput, max_steps
    if s.status == "waiting":
        s.status = "running"
    return i


def _eval(s: RunState, ev: E.Eval):
    step, val = ev.step, ev.val_loss
    units = s.train.units[-1] if s.train.units else 0.0
    t = s.train.times[-1] if s.train.times else 0.0
    if val is not None:  # None: an eval of other metrics only
        if s.val.steps and step <= s.val.steps[-1]:
            _truncate_evals(s, step)
        s.val.append(step, val, units, t)
    for name, value in ev.metrics.items():
        v = number(value)
        if v is None:
            continue
        curve = s.metrics.get(name)
        if curve is None:
            if len(s.metrics) >= MAX_METRICS:
                s.dropped_metrics += 1
                continue
            curve = s.metrics[name] = Curve()
        if curve.steps and step <= curve.steps[-1]:
            curve.truncate_from(step)
        curve.append(step, v, units, t)
    if val is not None and math.isfinite(val) and (s.best_val is None or val < s.best_val):
        s.best_val, s.best_val_step = val, step
    s.last_eval = ev
    if ev.experts is not None:
        s.experts = ev.experts


def _sample(s: RunState, ev: E.Sample):
    s.samples.append(ev)
    if len(s.samples) > s.max_samples:
        del s.samples[0]


def _memory(s: RunState, ev: E.Memory):
    s.memory = ev
    s.memory_history.append((ev.step, ev.totals))


def _system(s: RunState, ev: E.System):
    s.system = ev
    if ev.gpus:
        g = ev.gpus[0]
        util, used, total = g.get("util_pct"), g.get("mem_used"), g.get("mem_total")
        s.gpu_util_history.append(float(util) if util is not None else None)
        s.gpu_mem_history.append(used / total * 100 if used is not None and total else None)
        if any(r in THERMAL_THROTTLE for r in g.get("throttle") or ()):
            s.throttle_steps.append(s.step)
    if ev.cpu:
        util = ev.cpu.get("util_pct")
        s.cpu_util_history.append(float(util) if util is not None else None)


def _checkpoint(s: RunState, ev: E.Checkpoint):
    s.checkpoints.append((ev.step, ev.path))
    s.logs.append(("info", f"checkpoint at step {ev.step}: {ev.path}"))


def _kernel(s: RunState, ev: E.Kernel):
    s.kernels[(ev.name, str(ev.shape), str(ev.dtype))] = ev


def _internals(s: RunState, ev: E.Internals):
    while s.internals and s.internals[-1].step >= ev.step:  # a step probed again replaces the later probes
        s.internals.pop()
    s.internals.append(ev)


def _log(s: RunState, ev: E.Log):
    s.logs.append((ev.level, ev.message))
    if ev.state is not None and s.end is None:
        s.status = ev.state
        if ev.step is not None and ev.step > s.step:
            s.step = ev.step  # the step the trainer acknowledged a pause at (later than the last logged one)
        if ev.time is not None:
            if ev.state == "paused" and s.paused_since is None:
                s.paused_since = ev.time
            elif ev.state == "running" and s.paused_since is not None:
                s.paused_total += max(0.0, ev.time - s.paused_since)
                s.paused_since = None
    if ev.skipped is not None and ev.step is not None:
        s.skipped_steps.append(ev.step)


def _run_end(s: RunState, ev: E.RunEnd):
    s.end = ev
    s.status = ev.status
    s.error = ev.error
    s.exit_code = ev.exit_code
    if ev.step is not None:
        s.step = ev.step


_HANDLERS = {cls: (kind, handler) for kind, cls, handler in (
    ("run_start", E.RunStart, _run_start), ("eval", E.Eval, _eval),
    ("sample", E.Sample, _sample), ("memory", E.Memory, _memory), ("system", E.System, _system),
    ("checkpoint", E.Checkpoint, _checkpoint), ("kernel", E.Kernel, _kernel), ("internals", E.Internals, _internals),
    ("log", E.Log, _log),
    ("run_end", E.RunEnd, _run_end))}


# --- fold, then decide ---------------------------------------------------------------------------------------

def writer_gone(s: RunState) -> bool:
    """The run has no run_end and the trainer of its latest run_start is not running (any more)."""
    return s.end is None and not trainer_alive(s.pid, s.run_started)


def settle(s: RunState) -> bool:
    """Mark the run killed when its log has no run_end and its trainer is gone; True when it was."""
    if s.end is None and s.status in ("running", "paused", "waiting") and writer_gone(s):
        s.mark_killed()
        return True
    return False


@contextlib.contextmanager
def bulk():
    """Around the fold of a whole log: it makes millions of objects that live as long as the state, and the
    cyclic garbage collector's passes over them free nothing yet cost a tenth of the fold, so it waits."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def fold_available(poll, s: RunState | None = None) -> RunState:
    """Fold everything a log source holds now (`poll()` returns the new events, [] when there are none):
    the first read of a watched or replayed log."""
    s = s if s is not None else RunState()
    with bulk():
        while True:
            events = poll()
            if not events:
                return s
            s.apply_all(events)


def load_state(path, stats=None) -> RunState:
    """Fold a whole log; a run without run_end whose trainer is gone is marked killed."""
    s = RunState()
    with bulk():
        for block in read_blocks(path, stats):
            s.apply_all(block)
    settle(s)
    return s
