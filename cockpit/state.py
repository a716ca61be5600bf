"""The reducer: one function folds events into RunState. The TUI, `watch` and `--replay` all use it.

`RunState.apply(event)` never raises on bad input: an event with missing or mistyped fields is counted
in `bad_events` and ignored; unknown types are counted in `unknown_types`. Steps that go backwards (a
resumed run re-doing steps after its last checkpoint, or a log spliced out of order) replace the later
points, so the curves always read left to right.
"""
from __future__ import annotations

import bisect
import math
from collections import deque
from dataclasses import dataclass, field

NUM = (int, float)


def _num(x) -> float | None:
    """A finite-or-not float from an event field; None if absent or not a number ("nan" strings allowed)."""
    if type(x) is float or type(x) is int:
        return float(x)
    if isinstance(x, str) and x in ("nan", "inf", "-inf"):
        return float(x)
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
    lrs: list = field(default_factory=list)
    best_val: float | None = None
    best_val_step: int | None = None
    last_eval: dict | None = None
    experts: dict | None = None
    samples: list = field(default_factory=list)
    memory: dict | None = None
    memory_history: list = field(default_factory=list)   # (step, totals)
    system: dict | None = None
    gpu_util_history: deque = field(default_factory=lambda: deque(maxlen=120))
    gpu_mem_history: deque = field(default_factory=lambda: deque(maxlen=120))
    cpu_util_history: deque = field(default_factory=lambda: deque(maxlen=120))
    throttle_steps: list = field(default_factory=list)
    checkpoints: list = field(default_factory=list)      # (step, path)
    kernels: dict = field(default_factory=dict)          # (name, shape, dtype) -> event
    logs: deque = field(default_factory=lambda: deque(maxlen=500))
    skipped_steps: list = field(default_factory=list)    # steps whose update was skipped (non-finite)
    resumes: list = field(default_factory=list)          # steps a resume continued from
    end: dict | None = None
    error: str | None = None
    exit_code: int | None = None
    # bookkeeping
    events: int = 0
    bad_events: int = 0
    unknown_types: dict = field(default_factory=dict)
    out_of_order: int = 0
    counts: dict = field(default_factory=dict)           # event type -> how many were folded
    version: int = 0
    max_samples: int = 500

    # --- the reducer ---------------------------------------------------------------------------------
    def apply(self, ev: dict) -> None:
        self.events += 1
        self.version += 1
        handler = _HANDLERS.get(ev.get("type"))
        if handler is not None:
            self.counts[ev["type"]] = self.counts.get(ev["type"], 0) + 1
        else:
            t = str(ev.get("type"))[:40]
            self.unknown_types[t] = self.unknown_types.get(t, 0) + 1
            return
        t = ev.get("time")
        if type(t) is float or type(t) is int:
            if self.start_time is None:
                self.start_time = t
            self.last_time = t
        try:
            handler(self, ev)
        except (KeyError, TypeError, ValueError, AttributeError, IndexError):
            self.bad_events += 1

    def apply_all(self, events) -> "RunState":
        for ev in events:
            self.apply(ev)
        return self

    # --- derived -------------------------------------------------------------------------------------
    @property
    def ended(self) -> bool:
        return self.end is not None

    def eta(self) -> float | None:
        """Seconds left, from the step rate over the logged curve."""
        if not self.max_steps or len(self.train) < 2 or self.status not in ("running", "paused"):
            return None
        s0, s1 = self.train.steps[0], self.train.steps[-1]
        t0, t1 = self.train.times[0], self.train.times[-1]
        if s1 <= s0 or t1 <= t0:
            return None
        return (t1 - t0) / (s1 - s0) * max(0, self.max_steps - s1)

    def mean_throughput(self) -> float | None:
        if self.end and isinstance(self.end.get("metrics"), dict):
            tp = _num(self.end["metrics"].get("throughput"))
            if tp is not None:
                return tp
        if len(self.train) >= 2 and self.train.times[-1] > self.train.times[0]:
            return (self.train.units[-1] - self.train.units[0]) / (self.train.times[-1] - self.train.times[0])
        return self.throughput

    def wall_time(self) -> float | None:
        if self.end and isinstance(self.end.get("metrics"), dict):
            w = _num(self.end["metrics"].get("wall_time"))
            if w is not None:
                return w
        if self.start_time is not None and self.last_time is not None:
            return self.last_time - self.start_time
        return None

    def mark_killed(self):
        """A log with no run_end whose trainer is gone: the run was killed."""
        if self.end is None and self.status in ("running", "paused", "waiting"):
            self.status = "killed"


def _run_start(s: RunState, ev: dict):
    resumed = ev.get("resumed_from")
    if isinstance(resumed, int) and not isinstance(resumed, bool):
        s.resumes.append(resumed)
        s.train.truncate_from(resumed + 1)
        del s.lrs[len(s.train.steps):]
        s.val.truncate_from(resumed + 1)
        s.end = None
        s.error = None
    s.run_id = ev.get("run_id", s.run_id)
    s.preset = ev.get("preset", s.preset)
    s.arch = ev.get("arch", s.arch)
    s.task = ev.get("task", s.task)
    if isinstance(ev.get("config"), dict):
        s.config = ev["config"]
    n = ev.get("n_params")
    s.n_params = n if isinstance(n, int) else s.n_params
    s.device = ev.get("device", s.device)
    s.profile = ev.get("profile", s.profile)
    s.pid = ev.get("pid") if isinstance(ev.get("pid"), int) else s.pid
    s.unit = ev.get("unit", s.unit) if ev.get("unit") in ("tokens", "items") else s.unit
    ms = ev.get("max_steps")
    if isinstance(ms, int):
        s.max_steps = ms
    elif isinstance(s.config.get("train"), dict) and isinstance(s.config["train"].get("max_steps"), int):
        s.max_steps = s.config["train"]["max_steps"]
    s.world_size = ev.get("world_size", 1) if isinstance(ev.get("world_size"), int) else 1
    s.run_started = ev.get("time") if type(ev.get("time")) in NUM else s.run_started
    s.status = "running"


def _step(s: RunState, ev: dict):
    step = ev["step"]
    loss = _num(ev["loss"])
    if type(step) is not int or loss is None:
        raise TypeError("step event without int step and numeric loss")
    units = ev.get("tokens", ev.get("items"))
    units = float(units) if type(units) in NUM else (s.train.units[-1] if s.train.units else 0.0)
    el = ev.get("elapsed")
    el = float(el) if type(el) in NUM else ((ev["time"] - s.start_time) if s.start_time is not None else 0.0)
    if s.train.steps and step <= s.train.steps[-1]:
        s.out_of_order += 1
        s.train.truncate_from(step)
        del s.lrs[len(s.train.steps):]
        s.val.truncate_from(step + 1)
    s.train.append(step, loss, units, el)
    lr = _num(ev.get("lr"))
    s.lrs.append(lr)
    s.step, s.loss, s.lr = step, loss, lr
    s.grad_norm = _num(ev.get("grad_norm"))
    tp = _num(ev.get("throughput"))
    s.throughput = tp if tp is not None else s.throughput
    s.units_seen, s.elapsed = units, el
    ms = ev.get("max_steps")
    if type(ms) is int:
        s.max_steps = ms
    if s.status in ("waiting",):
        s.status = "running"


def _eval(s: RunState, ev: dict):
    step = ev["step"]
    val = _num(ev["val_loss"])
    if type(step) is not int or val is None:
        raise TypeError("eval event without int step and numeric val_loss")
    units = s.train.units[-1] if s.train.units else 0.0
    t = s.train.times[-1] if s.train.times else 0.0
    if s.val.steps and step <= s.val.steps[-1]:
        s.val.truncate_from(step)
    s.val.append(step, val, units, t)
    if math.isfinite(val) and (s.best_val is None or val < s.best_val):
        s.best_val, s.best_val_step = val, step
    s.last_eval = ev
    if isinstance(ev.get("experts"), dict):
        s.experts = ev["experts"]


def _sample(s: RunState, ev: dict):
    if type(ev["step"]) is not int or ev.get("kind") not in ("text", "image"):
        raise TypeError("sample event without int step and kind text/image")
    if ev["kind"] == "text" and not isinstance(ev.get("text"), str):
        raise TypeError("text sample without text")
    if ev["kind"] == "image" and not isinstance(ev.get("image"), dict):
        raise TypeError("image sample without image")
    s.samples.append(ev)
    if len(s.samples) > s.max_samples:
        del s.samples[0]


def _memory(s: RunState, ev: dict):
    if not isinstance(ev.get("layers"), list) or not isinstance(ev.get("totals"), dict):
        raise TypeError("memory event without layers list and totals dict")
    s.memory = ev
    s.memory_history.append((ev.get("step"), ev["totals"]))


def _system(s: RunState, ev: dict):
    gpus, cpu = ev.get("gpus"), ev.get("cpu")
    if gpus is not None and (not isinstance(gpus, list) or not all(isinstance(g, dict) for g in gpus)):
        raise TypeError("gpus must be a list of objects")
    if cpu is not None and not isinstance(cpu, dict):
        raise TypeError("cpu must be a dict")
    s.system = ev
    if gpus:
        g = gpus[0]
        s.gpu_util_history.append(_num(g.get("util_pct")))
        used, total = _num(g.get("mem_used")), _num(g.get("mem_total"))
        s.gpu_mem_history.append(used / total * 100 if used is not None and total else None)
        if g.get("throttle") and any(r in ("hw_thermal", "sw_thermal", "hw_slowdown", "hw_power_brake")
                                     for r in g["throttle"]):
            s.throttle_steps.append(s.step)
    if cpu:
        s.cpu_util_history.append(_num(cpu.get("util_pct")))


def _checkpoint(s: RunState, ev: dict):
    if type(ev["step"]) is not int:
        raise TypeError("checkpoint step must be int")
    s.checkpoints.append((ev["step"], str(ev.get("path", ""))))


def _kernel(s: RunState, ev: dict):
    key = (str(ev["name"]), str(ev.get("shape")), str(ev.get("dtype")))
    s.kernels[key] = ev


def _log(s: RunState, ev: dict):
    level, message = str(ev.get("level", "info")), str(ev["message"])
    s.logs.append((level, message))
    state = ev.get("state")
    if state == "paused" and s.end is None:
        s.status = "paused"
    elif state == "running" and s.end is None:
        s.status = "running"
    skipped = ev.get("step") if ev.get("skipped") is not None else None
    if type(skipped) is int:
        s.skipped_steps.append(skipped)


def _run_end(s: RunState, ev: dict):
    status = ev["status"]
    if status not in ("completed", "stopped", "failed"):
        raise ValueError("unknown run_end status")
    s.end = ev
    s.status = status
    s.error = ev.get("error") if isinstance(ev.get("error"), str) else None
    s.exit_code = ev.get("exit_code") if isinstance(ev.get("exit_code"), int) else None
    if type(ev.get("step")) is int:
        s.step = ev["step"]


_HANDLERS = {
    "run_start": _run_start, "step": _step, "eval": _eval, "sample": _sample, "memory": _memory,
    "system": _system, "checkpoint": _checkpoint, "kernel": _kernel, "log": _log, "run_end": _run_end,
}


def load_state(path, stats=None) -> RunState:
    """Fold a whole log; a run without run_end whose pid is gone is marked killed."""
    from cockpit.events import read_events
    from common.procs import trainer_alive

    s = RunState().apply_all(read_events(path, stats))
    if s.end is None and not trainer_alive(s.pid, s.run_started):
        s.mark_killed()
    return s
