"""Hostile and unlucky input to the readers (issue 18, items 9, 10 and 13).

Logs whose fields are present but mistyped or absurd inside (a short image payload, a number for a prompt, a
400-digit step, 1e308 everywhere, control characters, a config nested 500 deep ...) are replayed with
`cockpit --replay`, watched in the TUI, listed and compared in the runs browser: every bad event is counted
and skipped, nothing prints a traceback, and the app never dies on log content. Output that cannot be
written (a full disk, an encoding that cannot show the report, an `--images` place that refuses the PNG)
is one line and exit 1 (2 for a place the user can change), with nothing half-written left behind.
"""
from __future__ import annotations

import base64
import codecs
import copy
import ctypes
import functools
import json
import os
import re
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import msgspec.inspect as mi
import pytest

from cockpit import cli
from cockpit import presets_info as presets_info_module
from cockpit.app import CockpitApp
from cockpit.compare import config_diff
from cockpit.runs.index import RunInfo, index_runs
from cockpit.runs.query import filter_runs
from cockpit.screens.run import RunScreen
from cockpit.widgets.loss_plot import LossPlot
from cockpit.widgets.samples_pane import word_diff
from cockpit.widgets.status_line import StatusLine, status_fields
from common import events as E
from common.dotted import MAX_DEPTH, NestedTooDeep, flatten, nested_deeper_than
from common.state import MAX_UNKNOWN_TYPES, load_state
from tests.conftest import ROOT, cockpit

sys.path.insert(0, str(ROOT / "scripts"))
from pty_terminal import Terminal  # noqa: E402

# numpy's overflow and invalid-cast warnings are bugs here: a value the protocol lets through must draw cleanly
pytestmark = pytest.mark.filterwarnings("error::RuntimeWarning")
SIZE = (120, 40)
IMAGE = {"h": 4, "w": 6, "c": 3, "data": base64.b64encode(bytes(range(72))).decode()}
ESCAPES = "\x1b[31mred\x1b[2J\x1b]0;title\x07\r\x00\x08[b]bold[/b] [/]"


class Raw:
    """JSON text written as it is (numbers Python's json cannot write, nesting it cannot either)."""

    def __init__(self, text: str):
        self.text = text


def dumps(event: dict) -> str:
    raws: dict[str, str] = {}

    def sub(o):
        if isinstance(o, Raw):
            key = f"__raw{len(raws)}__"
            raws[key] = o.text
            return key
        if isinstance(o, dict):
            return {k: sub(v) for k, v in o.items()}
        if isinstance(o, list):
            return [sub(v) for v in o]
        return o
    line = json.dumps(sub(event))
    for key, text in raws.items():
        line = line.replace(f'"{key}"', text)
    return line


def write_log(path: Path, events: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(dumps(e) + "\n" for e in events))
    return path


def base_events() -> list[dict]:
    """A valid run with every event type and every field (so that each can be made hostile)."""
    evs = [
        {"type": "run_start", "run_id": "nanogpt-hostile", "preset": "nanogpt", "arch": "gpt", "task": "lm",
         "config": {"model": {"n_layer": 2}, "train": {"max_steps": 10}}, "n_params": 1000, "device": "cpu",
         "profile": "cpu", "pid": 0, "unit": "tokens", "max_steps": 10, "world_size": 2, "torch": "2.13",
         "amp_dtype": "float32"},
        {"type": "log", "level": "info", "message": "start", "ranks": [{"rank": 0, "host": "h", "pid": 1}]},
    ]
    for s in range(1, 6):
        evs.append({"type": "step", "step": s, "loss": 3.0 - s * 0.1, "lr": 1e-3, "grad_norm": 1.0,
                    "tokens": s * 100.0, "throughput": 100.0, "elapsed": s * 1.0, "max_steps": 10,
                    "ranks": [{"rank": 0, "throughput": 50.0, "step_ms": 10.0}]})
    evs += [
        {"type": "eval", "step": 5, "val_loss": 2.6, "metrics": {"accuracy": 0.5, "unit": "x"},
         "experts": {"counts": [1, 2, 3], "balance_loss": 0.1, "dropped": 0, "per_layer": [[1, 2, 3]]},
         "method": "full"},
        {"type": "sample", "step": 5, "kind": "text", "text": "hello world", "prompt": "h"},
        {"type": "sample", "step": 5, "kind": "image", "image": dict(IMAGE), "classes": ["0", 1],
         "grid": {"rows": 1, "cols": 2, "cell_h": 4, "cell_w": 3, "pad": 0}, "sampler": "ddim-20", "guidance": 1.5},
        {"type": "memory", "step": 5, "layers": [{"name": "h.0", "activation_bytes": 4000, "param_bytes": 8000},
                                                {"name": "h.1", "activation_bytes": 2000, "param_bytes": 8000}],
         "totals": {"params": 8, "grads": 8, "optimizer": 16, "activations": 4, "peak_allocated": 100,
                    "reserved": 200, "trainable_params": 10, "method": "lora", "quant_state": 3},
         "budget_bytes": 100000, "method": "lora",
         "comparison": [{"method": "full", "params": 1, "quant_state": 0, "grads": 1, "optimizer": 2,
                         "activations": 3, "total": 7, "n_params": 10, "trainable_params": 10},
                        {"method": "qlora", "error": "no cuda"}], "comparison_note": "measured"},
        {"type": "system", "gpus": [{"index": 0, "name": "H100", "temp_c": 50.0, "util_pct": 90.0, "mem_used": 10,
                                     "mem_total": 100, "power_w": 300.0, "throttle": ["hw_thermal"]}],
         "cpu": {"util_pct": 50.0, "rss": 1, "ram_used": 2, "ram_total": 3, "cores": 2}},
        {"type": "system", "cpu": {"util_pct": 25.0, "rss": 1, "ram_used": 2, "ram_total": 3, "cores": 2},
         "nvml": "NVMLError_LibraryNotFound"},
        {"type": "checkpoint", "step": 5, "path": "ckpt.pt", "reason": "interval"},
        {"type": "kernel", "name": "rmsnorm", "shape": [4, 8], "dims": "B,D", "dtype": "float32", "backend": "triton",
         "device": "cpu", "timing": "interpreter", "mem_method": "m", "note": "n", "ok": True,
         "max_abs_err": 1e-7, "rel_rms_err": 1e-7, "grad_max_abs_err": 1e-7, "grad_rel_rms_err": 1e-7,
         "worst": "out", "tol_rms": 1e-5, "tol_max": 1e-5, "torch_fwd_ms": 1.0, "torch_ms": 2.0, "torch_mem": 100,
         "triton_fwd_ms": 0.5, "triton_ms": 1.0, "triton_mem": 50, "compile_fwd_ms": 0.7, "compile_ms": 1.2,
         "compile_mem": 60, "speedup": 2.0, "mem_saving": 0.5},
        {"type": "log", "level": "warning", "message": "step 5 skipped", "state": "paused", "step": 5, "skipped": 1},
        {"type": "run_end", "status": "failed", "step": 5, "metrics": {"best_val_loss": 2.6, "wall_time": 5.0,
         "throughput": 100.0, "unit": "tokens"}, "error": "boom", "exit_code": 1,
         "memory": {"step": 5, "layers": [{"name": "h.0", "activation_bytes": 4, "param_bytes": 8}],
                    "totals": {"params": 8}}},
    ]
    return [{"v": 1, "time": 1000.0 + i, **e} for i, e in enumerate(evs)]


# every field of every event (and of its nested records) is set to each of these in turn
HOSTILE = {
    "1e308": 1e308, "-1e308": -1e308, "400-digit int": Raw("1" + "0" * 400), "-400-digit int": Raw("-1" + "0" * 400),
    "2**63": 2**63, "2**64": 2**64, "-1": -1, "-2**63-1": -2**63 - 1, "0": 0, "nan": "nan", "inf": "inf",
    "-inf": "-inf", "empty string": "", "10 KB string": "x" * 10_000, "escapes": ESCAPES, "empty list": [],
    "empty object": {}, "list of an object": [{}], "list nested 500 deep": Raw("[" * 500 + "1" + "]" * 500),
    "object nested 500 deep": Raw('{"a":' * 500 + "1" + "}" * 500), "true": True, "null": None, "1.5": 1.5,
    "a number as a string": "12", "5e-324": 5e-324, "list of 1e308": [1e308, -1e308], "list of strings": ["a", "b"],
    "list of a huge int": [10**30],
}


def field_paths(obj, prefix=()):
    """Every path into an event: its keys, nested keys, and the first element of each list."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k != "type":
                yield prefix + (k,)
                yield from field_paths(v, prefix + (k,))
    elif isinstance(obj, list) and obj:
        yield prefix + (0,)
        yield from field_paths(obj[0], prefix + (0,))


def with_value(event: dict, path: tuple, value) -> dict:
    out = copy.deepcopy(event)
    node = out
    for p in path[:-1]:
        node = node[p]
    node[path[-1]] = value
    return out


def mutations():
    """(case, index in base_events, the event with one field made hostile)."""
    base = base_events()
    for i, ev in enumerate(base):
        for path in field_paths(ev):
            for name, value in HOSTILE.items():
                yield f"{ev['type']}.{'.'.join(map(str, path))}={name}", i, with_value(ev, path, value)


def decoded(event: dict):
    return E.decode(dumps(event).encode())


def hostile_log(path: Path, i: int, event: dict) -> Path:
    """The base run with its event i replaced by `event`, which comes again at the end: the latest of its
    type, the one the panes show."""
    base = base_events()
    return write_log(path, base[:i] + [event] + base[i + 1:] + [event])


@functools.cache
def accepted() -> list[tuple[str, int, dict]]:
    """The mutations the protocol lets through: the values the report and the panes must draw."""
    return [(case, i, ev) for case, i, ev in mutations() if isinstance(decoded(ev), E.Event)]


# --- the protocol: each field validated where it is read ----------------------------------------------------

ISSUE_CASES = {  # the issue's mistyped fields, and their siblings: each one bad event
    "an image payload shorter than h*w*c": ("image", ("image", "data"), base64.b64encode(bytes(70)).decode()),
    "a prompt that is a number": ("sample", ("prompt",), 12),
    "byte counts as strings": ("memory", ("layers", 0, "activation_bytes"), "4000"),
    "throttle as an int": ("system", ("gpus", 0, "throttle"), 3),
    "expert counts as an int": ("eval", ("experts", "counts"), 6),
    "a 400-digit step": ("step", ("step",), Raw("1" * 400)),
    "1e308 where an int belongs": ("run_start", ("n_params",), 1e308),
    "a negative size": ("memory", ("totals", "params"), -1),
    "a step beyond int64": ("checkpoint", ("step",), 2**63),
    "a time that is NaN": ("step", ("time",), "nan"),
    "tokens that are infinite": ("step", ("tokens",), "inf"),
    "a layer name of 10 KB": ("memory", ("layers", 0, "name"), "h" * 10_000),
    "escapes in a layer name": ("memory", ("layers", 0, "name"), ESCAPES),
    "a kernel shape of -1": ("kernel", ("shape", 0), -1),
    "a run config nested 500 deep": ("run_start", ("config",), Raw('{"a":' * 500 + "1" + "}" * 500)),
    "layers nested in a list": ("memory", ("layers",), [[{"name": "h.0"}]]),
    "an image of 0 rows": ("image", ("image", "h"), 0),
    "a grid of -2 columns": ("image", ("grid", "cols"), -2),
    "a world of 0 processes": ("run_start", ("world_size",), 0),
    "an exit code beyond int64": ("run_end", ("exit_code",), Raw("9" * 30)),
    "a metric beyond int64": ("eval", ("metrics", "accuracy"), Raw("9" * 30)),
}


def base_event(kind: str) -> dict:
    """The first event of a type in base_events ("image": the image sample)."""
    if kind == "image":
        return next(e for e in base_events() if e.get("kind") == "image")
    return next(e for e in base_events() if e["type"] == kind)


def issue_case(name: str) -> dict:
    kind, path, value = ISSUE_CASES[name]
    return with_value(base_event(kind), path, value)


@pytest.mark.parametrize("name", ISSUE_CASES)
def test_a_mistyped_or_out_of_bounds_field_makes_a_bad_event(name):
    ev = decoded(issue_case(name))
    assert isinstance(ev, E.Invalid), ev


def test_every_field_at_every_hostile_value_decodes_to_an_event_or_a_bad_event():
    outcomes = {"event": 0, "bad": 0}
    for case, _i, event in mutations():
        ev = decoded(event)  # never raises: the line is a JSON object with a string type
        assert isinstance(ev, (E.Event, E.Invalid)), case
        outcomes["event" if isinstance(ev, E.Event) else "bad"] += 1
        if isinstance(ev, E.Event):
            for name in ("step", "max_steps", "n_params", "budget_bytes"):
                value = getattr(ev, name, None)
                assert value is None or 0 <= value <= E.INT64_MAX, case
            assert ev.time is None or 0 <= ev.time < float("inf"), case
    assert outcomes["event"] and outcomes["bad"]


def test_values_a_diverging_run_writes_stay_valid():
    for field, value in (("loss", 1e308), ("loss", -1e308), ("loss", "nan"), ("grad_norm", "inf"), ("lr", "inf")):
        step = {"type": "step", "step": 1, "loss": 1.0, field: value}
        assert isinstance(decoded(step), E.Step), (field, value)
    assert isinstance(decoded({"type": "eval", "step": 1, "val_loss": "nan"}), E.Eval)


def test_free_text_keeps_its_words_and_shows_its_control_characters():
    ev = decoded({"type": "sample", "step": 1, "kind": "text", "text": f"line 1\n\tline 2 {ESCAPES}",
                  "prompt": "\x1b[2J"})
    assert isinstance(ev, E.Sample)
    assert ev.text.startswith("line 1\n\tline 2 ␛[31mred") and "\x1b" not in ev.text and "\r" not in ev.text
    assert ev.prompt == "␛[2J"
    start = decoded({"type": "run_start", "run_id": "r\x1b[31m", "config": {"k\x07": ["\x1b"]}})
    assert start.run_id == "r␛[31m" and start.config == {"k␇": ["␛"]}
    assert "\x1b" not in decoded({"type": "run_end", "status": "failed", "error": ESCAPES}).error
    assert decoded({"type": "system", "nvml": "NVMLError\x1b[2J"}).nvml == "NVMLError␛[2J"


def bound_phrase(t) -> str | None:
    """What docs/events.md says of a field's bounds, from its type in common/events.py."""
    if isinstance(t, mi.UnionType):
        phrases = [p for p in (bound_phrase(x) for x in t.types if not isinstance(x, mi.NoneType)) if p]
        return phrases[0] if len(phrases) == 1 else None
    if isinstance(t, mi.IntType) and t.ge in (0, 1):
        return f"≥ {t.ge}" if t.le == E.INT64_MAX else f"{t.ge} to {t.le}"
    if isinstance(t, mi.FloatType) and t.ge is not None:
        return "finite, ≥ 0" if t.ge == 0 else "finite"
    if isinstance(t, mi.StrType) and t.max_length:
        return f"one line, ≤ {t.max_length} characters"
    if isinstance(t, mi.ListType):
        p = bound_phrase(t.item_type)
        return p if p is None or p.startswith("each") else f"each {p}"
    return None


def test_every_bound_is_in_its_fields_meaning_on_the_doc_page():
    doc = (ROOT / "docs" / "events.md").read_text()
    meanings, title = {}, None
    for line in doc.splitlines():
        m = re.match(r"^#{2,3} `?([A-Za-z_ ]+?)`?$", line)
        if m:
            title = m.group(1)
        m = re.match(r"^\| `(\w+)` \| .+? \| (?:yes|) \| (.*) \|$", line)
        if m and title:
            meanings[(title, m.group(1))] = m.group(2)
    nested = (E.Layer, E.MemoryTotals, E.MethodMemory, E.MemorySnapshot, E.Gpu, E.Cpu, E.Rank, E.Experts, E.Image,
              E.Grid)
    tables = [(kind, cls) for kind, cls in E.EVENT_TYPES.items()] + [(td.__name__, td) for td in nested]
    checked = 0
    for title, cls in tables:
        for f in mi.type_info(cls).fields:
            phrase = bound_phrase(f.type)
            if phrase is None:
                continue
            where = ("Every event", f.name) if f.name in ("v", "time") else (title, f.name)
            assert phrase in meanings[where], f"docs/events.md {where[0]}.{f.name}: say `{phrase}`"
            checked += 1
    assert f"at most {MAX_DEPTH} levels deep" in meanings[("run_start", "config")]
    assert checked


# --- cockpit --replay ---------------------------------------------------------------------------------------

def test_the_issues_bad_events_replay_with_exit_0_no_traceback_and_each_counted(tmp_path):
    bad = [issue_case(name) for name in ISSUE_CASES]
    log = write_log(tmp_path / "bad" / "events.jsonl", base_events()[:4] + bad + base_events()[4:])
    r = cockpit("--replay", str(log), "--color", "never")
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    assert f"ignored {len(bad)} events with missing or mistyped fields" in r.stdout
    assert "status failed" in r.stdout   # the rest of the run is all there


def test_every_accepted_hostile_value_replays_in_every_view(tmp_path, capsys):
    """Each value the protocol lets through (1e308 losses, escapes in text, empty lists, 5e-324 ...) drawn by
    the report in colour with its images saved, on each x-axis and with smoothing."""
    axes = ("step", "tokens", "time")
    for n, (case, i, event) in enumerate(accepted()):
        log = hostile_log(tmp_path / f"run{n}" / "events.jsonl", i, event)
        argv = ["--replay", str(log), "--color", "always", "--images", "--x", axes[n % 3]]
        code = cli.main(argv + (["--smooth", "0.9"] if n % 2 else []))
        out, err = capsys.readouterr()
        assert code == 0 and "Traceback" not in err, (case, err)
        assert "\x1b[2J" not in out and "\x07" not in out, case   # a log never drives the terminal


def extreme_runs() -> dict[str, list[dict]]:
    """Logs of valid but extreme values: each must draw (report, TUI) without failing."""
    base = base_events()
    start, end = base[0], base[-1]
    curve = [{"v": 1, "type": "step", "time": t, "step": s, "loss": loss, "tokens": tok, "elapsed": el}
             for t, s, loss, tok, el in (
                 (1e9, 1, 1e308, 0.0, 0.0), (2e9, 2, -1e308, 1e308, 1e308), (1.0, 10**9, 2.0, 5e-324, -1e308),
                 (1e308, 3, 5e-324, 1.0, 1.0), (5.0, 4, 1.0, 2.0, 1e-310), (6.0, E.INT64_MAX, 0.5, 3.0, 2.0))]
    layers = [{"name": f"transformer.h.{i}." + "x" * 400, "activation_bytes": i * 1000, "param_bytes": E.INT64_MAX}
              for i in range(10_000)]
    memory = {"v": 1, "type": "memory", "time": 9.0, "step": 3, "layers": layers,
              "totals": {"params": E.INT64_MAX, "grads": 0, "optimizer": E.INT64_MAX, "activations": 1},
              "budget_bytes": 0}
    text = {"v": 1, "type": "sample", "time": 9.0, "step": 3, "kind": "text", "text": ESCAPES * 1000,
            "prompt": ESCAPES}
    text2 = dict(text, step=4, text="plain words " * 20_000)
    grid = {"v": 1, "type": "sample", "time": 9.0, "step": 5, "kind": "image", "image": dict(IMAGE),
            "grid": {"rows": 7, "cols": 9, "cell_h": 4, "cell_w": 3, "pad": 1}, "classes": list(range(50))}
    kernel = dict(base_event("kernel"), speedup=1e308, mem_saving=-1e308, torch_ms=0.0, triton_ms=5e-324,
                  max_abs_err="nan", shape=[E.INT64_MAX] * 8, torch_mem=0, triton_mem=E.INT64_MAX)
    system = {"v": 1, "type": "system", "time": 9.0,
              "gpus": [{"index": E.INT64_MAX, "name": "g" * 512, "temp_c": -1e308, "util_pct": 1e308,
                        "mem_used": E.INT64_MAX, "mem_total": 1, "power_w": 1e308, "throttle": ["hw_thermal"] * 50}],
              "cpu": {"util_pct": 1e308, "rss": E.INT64_MAX, "ram_used": E.INT64_MAX, "ram_total": 0, "cores": 0},
              "nvml": ESCAPES}
    failed = dict(end, error=(ESCAPES + "\n") * 10_000, exit_code=-(2**63), step=E.INT64_MAX,
                  metrics={"wall_time": 1e308, "throughput": -1e308, "best_val_loss": "-inf", "peak_allocated": 1e308})
    return {
        "curve": [start] + curve + [end],
        "memory": [start] + base[2:7] + [memory],
        "samples": [start] + base[2:7] + [text, grid, text2, text],
        "kernels": [start] + [kernel, dict(kernel, name="gelu", ok=False, speedup=0.0)],
        "system": [start] + base[2:7] + [system],
        "failed": [start] + base[2:7] + [failed],
    }


@pytest.mark.parametrize("name", extreme_runs())
def test_extreme_but_valid_logs_replay_drawn(tmp_path, name):
    log = write_log(tmp_path / name / "events.jsonl", extreme_runs()[name])
    for args in (("--color", "never"), ("--color", "always", "--x", "tokens", "--images"), ("--x", "time")):
        r = cockpit("--replay", str(log), *args)
        assert r.returncode == 0 and "Traceback" not in r.stderr, (args, r.stderr)
        assert "\x1b[2J" not in r.stdout and "\x07" not in r.stdout
    assert "ignored" not in r.stdout   # valid: nothing was skipped


# --- the TUI ------------------------------------------------------------------------------------------------

async def wait_for(pilot, cond, what: str, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await pilot.pause(0.05)


def status_text(app) -> str:
    return str(app.screen.query_one(StatusLine).render())


async def cycle_view_keys(pilot, app):
    """e (EMA strengths), l (log-y), t (each x-axis), m (markers): every view of the chart is drawn."""
    for key in ("t", "t", "l", "t", "e", "m", "t", "l", "e", "e", "m"):
        await pilot.press(key)
        await pilot.pause()
        assert app.is_running and isinstance(app.screen, RunScreen), key


@pytest.fixture
def no_kernel_runs(monkeypatch):
    """The kernels panel shows the log's kernel events without running the benchmark."""
    monkeypatch.setattr("cockpit.screens.kernels.kernels_available", lambda: False)


async def test_watch_survives_the_issues_bad_events_and_shows_how_many_it_skipped(tmp_path, no_kernel_runs):
    bad = [issue_case(name) for name in ISSUE_CASES]
    log = write_log(tmp_path / "bad" / "events.jsonl", base_events()[:4] + bad + base_events()[4:])
    with open(log, "ab") as f:
        f.write(b"not json\n\xff\xfe\n")
    app = CockpitApp(watch=str(log))
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, RunScreen) and app.screen.loaded, "the log")
        await cycle_view_keys(pilot, app)
        await pilot.press("k")
        await wait_for(pilot, lambda: type(app.screen).__name__ == "KernelsScreen", "the kernels panel")
        await pilot.press("escape")
        await wait_for(pilot, lambda: isinstance(app.screen, RunScreen), "the run screen")
        assert app.is_running
        assert f"ignored {len(bad) + 2} bad lines" in status_text(app)


async def test_watch_of_a_growing_log_counts_the_bad_lines_as_they_arrive(tmp_path, no_kernel_runs):
    """The tail of a live run: bad events, deep nesting and junk appended (a torn line last) while the run
    screen follows the log; the count grows, the good events after them still arrive."""
    base = base_events()
    log = write_log(tmp_path / "live" / "events.jsonl", base[:4])
    app = CockpitApp(watch=str(log))
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, RunScreen) and app.screen.loaded, "the log")
        screen = app.screen
        bad = [issue_case(name) for name in ISSUE_CASES]
        junk = deeply_nested_lines() + [b"not json"]
        with open(log, "ab") as f:
            f.write("".join(dumps(e) + "\n" for e in bad).encode() + b"".join(line + b"\n" for line in junk))
        await wait_for(pilot, lambda: f"ignored {len(bad) + len(junk)} bad lines" in status_text(app), "the count")
        with open(log, "ab") as f:
            f.write("".join(dumps(e) + "\n" for e in base[4:]).encode() + b'{"type": "step", "st')
        await wait_for(pilot, lambda: screen.state.ended, "the run's end")
        assert screen.state.step == 5 and app.is_running
        assert f"ignored {len(bad) + len(junk)} bad lines" in status_text(app)   # a torn last line is not bad


@pytest.mark.parametrize("name", extreme_runs())
async def test_watch_draws_extreme_but_valid_logs(tmp_path, no_kernel_runs, name):
    log = write_log(tmp_path / name / "events.jsonl", extreme_runs()[name])
    app = CockpitApp(watch=str(log))
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, RunScreen) and app.screen.loaded, "the log")
        screen = app.screen
        await cycle_view_keys(pilot, app)
        for key in ("left_square_bracket", "d", "right_square_bracket", "d", "k"):
            await pilot.press(key)
            await pilot.pause()
        if type(app.screen).__name__ == "KernelsScreen":
            assert len(app.screen.results) == len(screen.state.kernels)
            await pilot.press("escape")
        await wait_for(pilot, lambda: app.screen is screen, "the run screen")
        assert app.is_running and "ignored" not in status_text(app)


def terminal_text(term: Terminal) -> str:
    """What the program wrote to its terminal, without the escape sequences that style and place it."""
    with term.lock:
        return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", term.out.decode("utf-8", "replace"))


def test_cockpit_watch_in_a_terminal_lives_on_a_hostile_log_and_quits_with_exit_0(tmp_path):
    """The real `cockpit watch` in a pseudo-terminal: the issue's bad events, lines nested 100,000 deep and
    junk, each view of the chart and the samples drawn; the count of what was skipped shown; ctrl+q exits 0."""
    bad = [issue_case(name) for name in ISSUE_CASES]
    junk = deeply_nested_lines() + [b"not json", b"\xff\xfe"]
    log = log_with_lines(tmp_path / "bad" / "events.jsonl", base_events()[:4] + bad, junk, base_events()[4:])
    term = Terminal([sys.executable, "-m", "cockpit", "watch", str(log)], cols=160, rows=40, cwd=ROOT)
    try:
        shown = f"ignored {len(bad) + len(junk)} bad lines"
        deadline = time.monotonic() + 60
        while shown not in terminal_text(term) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert shown in terminal_text(term), term.out[-3000:]
        for key in (b"t", b"l", b"e", b"m", b"t", b"t", b"[", b"d", b"]", b"d", b"l"):
            term.send(key)
            time.sleep(0.3)
        term.send(b"\x11")   # ctrl+q
        assert term.wait(30) == 0, term.out[-3000:]
        assert "Traceback" not in terminal_text(term)
    finally:
        term.kill()


def test_a_ui_that_fails_is_never_an_exit_0(tmp_path):
    """Should a pane ever fail on what it draws, Textual stops the app and prints why: `cockpit watch` then
    exits 1, never 0 as if all went well."""
    log = write_log(tmp_path / "run" / "events.jsonl", base_events())
    program = ("import sys; from cockpit.widgets.status_line import StatusLine; "
               "StatusLine.render = lambda self: 1 / 0; from cockpit.cli import main; sys.exit(main(sys.argv[1:]))")
    term = Terminal([sys.executable, "-c", program, "watch", str(log)], cols=120, rows=40, cwd=ROOT)
    try:
        assert term.wait(60) == 1, term.out[-3000:]
        assert b"ZeroDivisionError" in term.out
    finally:
        term.kill()


def combined_cases() -> list[tuple[str, int, dict]]:
    """For each event and each hostile value: the event with every field that value is valid in set to it
    at once (one frame per combination instead of one per field)."""
    by_event: dict[tuple[int, str], list[tuple]] = {}
    for case, i, _event in accepted():
        path, value = case.split("=", 1)
        by_event.setdefault((i, value), []).append(tuple(int(p) if p.isdigit() else p for p in path.split(".")[1:]))
    out = []
    base = base_events()
    for (i, value), paths in by_event.items():
        event = base[i]
        for path in sorted(paths, key=len, reverse=True):  # the deepest first: an outer one replaces them
            try:
                event = with_value(event, path, copy.deepcopy(HOSTILE[value]))
            except (KeyError, IndexError, TypeError):  # inside a field an outer path already replaced
                continue
        if isinstance(decoded(event), E.Event):
            out.append((f"{base[i]['type']}={value}", i, event))
    return out


async def test_every_accepted_hostile_value_draws_in_the_run_screen(tmp_path, no_kernel_runs):
    """Each combination of accepted hostile values is the state of the run screen in turn: the panes draw it
    in every view of the chart, the sample keys and the kernels panel work on it, and the app lives on."""
    cases = combined_cases()
    log = write_log(tmp_path / "base" / "events.jsonl", base_events())
    app = CockpitApp(watch=str(log))
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, RunScreen) and app.screen.loaded, "the log")
        screen = app.screen
        plot = screen.query_one(LossPlot)
        for n, (case, i, event) in enumerate(cases):
            screen.state = load_state(hostile_log(tmp_path / f"c{n}" / "events.jsonl", i, event))
            screen.redraw(force=True)
            await pilot.pause()
            for key in ("t", "l", "e", "m") if event["type"] in ("step", "eval", "run_start", "checkpoint") else ():
                await pilot.press(key)  # (press waits until the key's redraw is done)
            for key in ("left_square_bracket", "d", "d", "right_square_bracket") if event["type"] == "sample" else ():
                await pilot.press(key)
            if event["type"] == "kernel":
                await pilot.press("k")
                await wait_for(pilot, lambda: type(app.screen).__name__ == "KernelsScreen", "the kernels panel")
                await pilot.press("escape")
                await wait_for(pilot, lambda: app.screen is screen, "the run screen")
            await pilot.pause()
            assert app.is_running and app.screen is screen, case
        assert plot.size.width > 0 and len(cases) > len(E.EVENT_TYPES)


# --- the runs browser and the comparison --------------------------------------------------------------------

def hostile_runs_dir(root: Path) -> Path:
    """A runs directory of the extreme logs, the issue's bad events, and a run whose config nests 500 deep."""
    for name, events in extreme_runs().items():
        write_log(root / name / "events.jsonl", events)
    bad = [issue_case(name) for name in ISSUE_CASES]
    write_log(root / "bad" / "events.jsonl", base_events()[:4] + bad + base_events()[4:])
    deep = issue_case("a run config nested 500 deep")
    write_log(root / "deep-config" / "events.jsonl", [deep] + base_events()[1:])
    return root


async def test_the_runs_browser_lists_filters_and_compares_hostile_runs(tmp_path):
    root = hostile_runs_dir(tmp_path / "runs")
    app = CockpitApp(start="runs", runs_dir=str(root))
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: type(app.screen).__name__ == "RunsScreen" and app.screen.loaded, "the index")
        browser = app.screen
        assert {r.name for r in browser.shown} == {p.name for p in root.iterdir()}
        for row in range(len(browser.shown)):   # each run's detail line
            browser.query_one("#runs-table").move_cursor(row=row)
            await pilot.pause()
        await pilot.press("slash", *"model.n_layer:2", "enter")
        await pilot.pause()
        assert browser.shown and "deep-config" not in {r.name for r in browser.shown}
        browser.query_one("#runs-filter").value = ""
        await pilot.pause(0.1)
        browser.query_one("#runs-table").focus()
        names = [r.name for r in browser.shown]
        for name in ("curve", "failed"):
            browser.query_one("#runs-table").move_cursor(row=names.index(name))
            await pilot.press("space")
        await pilot.press("c")
        await wait_for(pilot, lambda: type(app.screen).__name__ == "CompareScreen" and app.screen.loaded,
                       "the comparison")
        for key in ("t", "t", "l", "e", "t"):
            await pilot.press(key)
            await pilot.pause()
        assert app.is_running
        await pilot.press("escape")
        await wait_for(pilot, lambda: app.screen is browser, "the browser")


def test_runs_listing_and_its_filters_survive_hostile_runs(tmp_path):
    root = hostile_runs_dir(tmp_path / "runs")
    for args in ((), ("--json",), ("--filter", "model.n_layer:2"), ("--filter", "model.n_layer>1"),
                 ("--sort", "wall_time"), ("--sort", "best_val", "--reverse"), ("--sort", "throughput")):
        r = cockpit("runs", "--dir", str(root), *args)
        assert r.returncode == 0 and "Traceback" not in r.stderr, (args, r.stderr)
    listed = [json.loads(line) for line in cockpit("runs", "--dir", str(root), "--json").stdout.splitlines()]
    assert {run["path"].rsplit("/", 1)[-1] for run in listed} == {p.name for p in root.iterdir()}
    r = cockpit("--replay", str(root / "curve"), str(root / "failed"), str(root / "deep-config"), "--x", "tokens")
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr


@pytest.mark.parametrize("command", ["--replay", "watch"])
def test_a_device_or_a_pipe_given_as_the_log_is_one_line_and_exit_2(tmp_path, command):
    fifo = tmp_path / "events.jsonl"
    os.mkfifo(fifo)
    for path in ("/dev/zero", str(fifo)):
        r = cockpit(command, path, timeout=60)   # never waits on the pipe, never reads /dev/zero to its end
        why = f"cockpit: error: {path}: not a regular file (a device, a pipe or a socket); pass a run's events.jsonl"
        assert r.returncode == 2 and r.stderr == why + "\n", r.stderr


# --- nesting: a user's config nested too deeply is one refused item (item 13, the reader's part) -------------

def nested(depth: int) -> dict:
    d: dict = {"leaf": 1}
    for _ in range(depth):
        d = {"a": d}
    return d


def test_flatten_refuses_a_config_nested_too_deeply_or_containing_itself():
    assert flatten(nested(MAX_DEPTH - 1))["a." * (MAX_DEPTH - 1) + "leaf"] == 1
    with pytest.raises(NestedTooDeep):
        flatten(nested(500))
    looped: dict = {"model": {}}
    looped["model"]["self"] = looped
    with pytest.raises(NestedTooDeep):
        flatten(looped)
    assert nested_deeper_than(looped, MAX_DEPTH) and not nested_deeper_than(nested(3), MAX_DEPTH)
    assert nested_deeper_than([[[[1]]]], 3) and not nested_deeper_than([[[1]]], 3)


def test_a_too_deep_config_is_skipped_by_the_filters_and_the_comparison_only():
    runs = [RunInfo(path=Path("runs/deep"), config=nested(500)),
            RunInfo(path=Path("runs/ok"), config={"model": {"n_layer": 2}})]
    assert [r.name for r in filter_runs(runs, "model.n_layer:2")] == ["ok"]
    assert [r.name for r in filter_runs(runs, "model.n_layer>=2")] == ["ok"]
    assert config_diff([nested(500), {"model": {"n_layer": 2}}]) == {"model.n_layer": [None, 2]}


DEEP = 100_000


def deeply_nested_lines() -> list[bytes]:
    """Lines nested DEEP levels at each place a reader meets nesting: the whole line, an unknown field, the
    config, a metric, an unknown event type."""
    inner = "[" * DEEP + "]" * DEEP
    return [inner.encode()] + [(template % inner).encode() for template in (
        '{"type":"step","step":9,"loss":1.0,"junk":%s}', '{"type":"run_start","config":{"model":%s}}',
        '{"type":"eval","step":9,"val_loss":1.0,"metrics":{"a":%s}}', '{"type":"made_up","x":%s}')]


def log_with_lines(path: Path, before: list[dict], lines: list[bytes], after: list[dict]) -> Path:
    write_log(path, before)
    with open(path, "ab") as f:
        f.write(b"".join(line + b"\n" for line in lines))
        f.write("".join(dumps(e) + "\n" for e in after).encode())
    return path


def test_lines_nested_100000_deep_are_skipped_and_the_rest_replays_lists_and_compares(tmp_path):
    root, base, deep = tmp_path / "runs", base_events(), deeply_nested_lines()
    head = log_with_lines(root / "deep-head" / "events.jsonl", [], deep, base)
    middle = log_with_lines(root / "deep-middle" / "events.jsonl", base[:-1], deep, base[-1:])
    for log in (head, middle):
        r = cockpit("--replay", str(log), "--color", "never")
        assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
        assert f"skipped {len(deep)} of {len(base) + len(deep)} lines ({len(deep)} nested too deeply)" in r.stdout
        assert "status failed" in r.stdout and "best val 2.6000 @ 5" in r.stdout   # the rest is all there
    r = cockpit("--replay", str(head), str(middle), "--color", "never")
    assert r.returncode == 0 and "(the runs' configs are identical)" in r.stdout, r.stderr
    listed = [json.loads(line) for line in cockpit("runs", "--dir", str(root), "--json").stdout.splitlines()]
    assert sorted((run["path"].rsplit("/", 1)[-1], run["status"]) for run in listed) == [
        ("deep-head", "failed"), ("deep-middle", "failed")]
    assert sorted(r.name for r in filter_runs(index_runs(root), "model.n_layer:2")) == ["deep-head", "deep-middle"]


def test_a_config_int_beyond_floats_compares_as_no_number():
    runs = [RunInfo(path=Path("runs/big"), config={"model": {"n_layer": 10**400}})]
    assert filter_runs(runs, "model.n_layer>1") == []
    assert [r.name for r in filter_runs(runs, "model.n_layer:1000")] == ["big"]


@pytest.mark.parametrize("cached", ["[" * 100_000 + "]" * 100_000, '{"name": "x"}', '[{"name": 1}]', "[1, 2]", "{"])
def test_a_damaged_presets_cache_is_measured_again(tmp_path, monkeypatch, cached):
    monkeypatch.setenv("COCKPIT_CACHE", str(tmp_path))
    measured = [{"name": "nanogpt", "n_params": 10}]
    calls = []

    def inspect(cmd, **kwargs):   # trainers.inspect, without building every preset's model
        calls.append(cmd)
        return subprocess.CompletedProcess(cmd, 0, stdout=json.dumps(measured) + "\n", stderr="")
    monkeypatch.setattr(presets_info_module.subprocess, "run", inspect)
    assert presets_info_module.presets_info() == measured and len(calls) == 1
    cache = next(tmp_path.glob("presets-*.json"))
    cache.write_text(cached)
    assert presets_info_module.presets_info() == measured and len(calls) == 2
    assert json.loads(cache.read_text()) == measured
    assert presets_info_module.presets_info() == measured and len(calls) == 2   # the rewritten cache is used


def test_the_sample_diff_of_long_texts_compares_their_beginnings_only():
    start = time.monotonic()
    chunks = word_diff("plain words " * 20_000, "x y z " * 3_000)
    assert time.monotonic() - start < 5
    assert chunks[-1][1] == "unchecked" and "".join(c for c, _ in chunks) == "x y z " * 3_000


def test_a_flood_of_made_up_event_types_is_counted_in_a_few_names(tmp_path):
    log = write_log(tmp_path / "events.jsonl", base_events() + [{"type": f"t{i}"} for i in range(10_000)])
    state = load_state(log)
    assert sum(state.unknown_types.values()) == 10_000 and len(state.unknown_types) <= MAX_UNKNOWN_TYPES + 1


def test_status_line_counts_what_the_log_held_that_could_not_be_shown(tmp_path):
    log = write_log(tmp_path / "events.jsonl", base_events() + [issue_case("a negative size")])
    state = load_state(log)
    assert dict(status_fields(state))["ignored"] == "1 bad line"
    assert "ignored" not in dict(status_fields(load_state(write_log(tmp_path / "ok.jsonl", base_events()))))


# --- output that cannot be written (item 10) ----------------------------------------------------------------

def run_to(out, *args, env=None, preexec_fn=None) -> subprocess.CompletedProcess:
    """`cockpit ARGS` with stdout going to `out` (an open file); stderr captured."""
    return subprocess.run([sys.executable, "-m", "cockpit", *args], stdout=out, stderr=subprocess.PIPE, text=True,
                          cwd=ROOT, env={**os.environ, **(env or {})}, stdin=subprocess.DEVNULL,
                          preexec_fn=preexec_fn, timeout=600)


def one_error_line(r: subprocess.CompletedProcess, code: int, fragment: str):
    lines = r.stderr.strip().splitlines()
    assert r.returncode == code and len(lines) == 1, r.stderr
    assert lines[0].startswith("cockpit: error: ") and fragment in lines[0], lines[0]


@pytest.fixture
def finished_log(tmp_path) -> Path:
    return write_log(tmp_path / "run" / "events.jsonl", base_events())


@pytest.mark.parametrize("args", [("--replay", "{log}"), ("--replay", "{log}", "{log}"), ("runs", "--dir", "{root}"),
                                  ("runs", "--json", "--dir", "{root}"), ("presets",), ("presets", "--json"), ("--help",),
                                  ("runs", "--help"), ("--replay", "--help")])
def test_a_full_disk_under_stdout_is_one_line_and_exit_1(finished_log, args):
    args = [a.format(log=finished_log, root=finished_log.parent.parent) for a in args]
    with open("/dev/full", "w") as full:
        r = run_to(full, *args)
    one_error_line(r, 1, "cannot write the output: No space left on device")


@pytest.mark.parametrize("module, args", [("trainers", ("--help",)), ("trainers.inspect", ("--help",)),
                                          ("trainers.inspect", ("nanogpt",)), ("trainers.export_merged", ("--help",))])
def test_the_trainer_side_commands_on_a_full_disk_are_one_line_and_exit_1(module, args):
    with open("/dev/full", "w") as full:
        r = subprocess.run([sys.executable, "-m", module, *args], stdout=full, stderr=subprocess.PIPE, text=True,
                           cwd=ROOT, stdin=subprocess.DEVNULL, timeout=600)
    one_error_line(r, 1, "cannot write the output: No space left on device")


@pytest.mark.parametrize("args", [("--replay", "{log}"), ("runs", "--dir", "{root}"), ("presets", "--json"),
                                  ("--help",), ("watch", "{log}")])
def test_a_closed_stdout_is_one_line_and_exit_1(finished_log, args):
    args = [a.format(log=finished_log, root=finished_log.parent.parent) for a in args]
    r = run_to(None, *args, preexec_fn=lambda: os.close(1))   # `cockpit ... >&-`
    one_error_line(r, 1, "standard output is closed")


def test_a_full_disk_under_the_kernels_table_stops_the_benchmark_too():
    with open("/dev/full", "w") as full:
        r = run_to(full, "kernels", "--json", "--only", "gelu", "--dtype", "float32", "--no-compile")
    one_error_line(r, 1, "No space left on device")
    time.sleep(0.5)
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert "kernels.bench --json --only gelu --dtype float32" not in ps


def test_a_closed_pipe_ends_quietly(finished_log):
    proc = subprocess.Popen([sys.executable, "-m", "cockpit", "--replay", str(finished_log), str(finished_log)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
    proc.stdout.read(10)
    proc.stdout.close()
    assert proc.wait(timeout=60) == 0 and proc.stderr.read() == b""


@pytest.mark.parametrize("encoding", ["ascii", "latin-1"])
def test_an_output_encoding_that_cannot_show_the_report_is_one_line_and_exit_1(finished_log, tmp_path, encoding):
    with open(tmp_path / "out.txt", "w") as out:
        r = run_to(out, "--replay", str(finished_log), env={"PYTHONIOENCODING": encoding})
    one_error_line(r, 1, f"encoding ({encoding}) cannot show")
    assert "UTF-8" in r.stderr


def test_a_run_name_the_output_encoding_cannot_show_is_one_line_and_exit_1(tmp_path):
    events = base_events()
    events[0]["run_id"] = "run-é"
    log = write_log(tmp_path / "runs" / "run" / "events.jsonl", events)
    with open(tmp_path / "out.txt", "w") as out:
        r = run_to(out, "runs", "--dir", str(log.parent.parent), env={"PYTHONIOENCODING": "ascii"})
    one_error_line(r, 1, "encoding (ascii) cannot show '\\xe9'")   # stderr itself shows it escaped
    with open(tmp_path / "out.txt", "w") as out:   # JSON escapes what it cannot show: no error
        r = run_to(out, "runs", "--json", "--dir", str(log.parent.parent), env={"PYTHONIOENCODING": "ascii"})
    assert r.returncode == 0 and r.stderr == "" and "run-\\u00e9" in (tmp_path / "out.txt").read_text()


def test_the_c_locale_shows_the_report_in_utf_8(finished_log, tmp_path):
    with open(tmp_path / "out.txt", "w") as out:
        r = run_to(out, "--replay", str(finished_log), "--color", "never", env={"LANG": "C", "LC_ALL": "C"})
    assert r.returncode == 0 and r.stderr == "" and "┌" in (tmp_path / "out.txt").read_text(encoding="utf-8")


@pytest.mark.parametrize("encoding", ["ascii", "latin-1"])
def test_the_ui_on_a_terminal_that_cannot_show_its_characters_is_one_line_and_exit_2(finished_log, encoding):
    term = Terminal([sys.executable, "-m", "cockpit", "watch", str(finished_log)], cols=120, rows=40, cwd=ROOT,
                    env={"PYTHONIOENCODING": encoding})
    try:
        assert term.wait(60) == 2, term.out[-3000:]
        lines = terminal_text(term).strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("cockpit: error: the cockpit UI draws with UTF-8"), lines
        assert f"encoding is {codecs.lookup(encoding).name}" in lines[0]
    finally:
        term.kill()


def test_a_run_directory_named_in_another_encoding_replays_and_lists(tmp_path):
    root = tmp_path / "runs"
    name = os.fsdecode(b"run-\xff\xfe")
    log = write_log(root / name / "events.jsonl", base_events())
    for args in (("--replay", str(log)), ("runs", "--dir", str(root)), ("runs", "--json", "--dir", str(root))):
        with open(tmp_path / "out.txt", "w") as out:
            r = run_to(out, *args, env={"PYTHONIOENCODING": "utf-8"})
        assert r.returncode == 0 and r.stderr == "", (args, r.stderr)


def image_log(tmp_path) -> Path:
    return write_log(tmp_path / "run" / "events.jsonl", [e for e in base_events() if e["type"] != "run_end"])


def test_images_onto_a_directory_or_a_device_are_refused_never_replaced(tmp_path):
    log = image_log(tmp_path)
    target = log.parent / "sample-5.png"
    target.mkdir()
    r = cockpit("--replay", str(log), "--images")
    one_error_line(r, 2, f"--images: cannot write {target}")
    assert target.is_dir() and r.stdout == ""
    target.rmdir()
    target.symlink_to(os.devnull)
    r = cockpit("--replay", str(log), "--images")
    one_error_line(r, 2, "exists and is not a regular file")
    assert target.is_symlink() and Path(os.devnull).is_char_device()


def without_overriding_permissions():
    """In the child before it runs: root's power to write where permissions say no (CAP_DAC_OVERRIDE,
    CAP_DAC_READ_SEARCH, CAP_FOWNER) dropped from its bounding set, so the program runs as a user would."""
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    for cap in (1, 2, 3):
        if prctl(24, cap, 0, 0, 0) != 0 and os.geteuid() == 0:   # 24: PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def test_images_into_a_directory_without_write_permission_are_one_line_and_exit_2(tmp_path):
    """A run directory the user may read but not write (another user's runs, a read-only share)."""
    log = write_log(tmp_path / "run" / "events.jsonl", [e for e in base_events() if e["type"] != "run_end"])
    os.chmod(log.parent, 0o555)
    try:
        with open(os.devnull, "w") as out:
            r = run_to(out, "--replay", str(log), "--images", preexec_fn=without_overriding_permissions)
        one_error_line(r, 2, f"--images: cannot write {log.parent / 'sample-5.png'} (Permission denied)")
        assert sorted(p.name for p in log.parent.iterdir()) == ["events.jsonl"]
    finally:
        os.chmod(log.parent, 0o755)


def test_images_on_a_full_disk_are_one_line_exit_1_and_leave_no_partial_file(tmp_path):
    log = image_log(tmp_path)

    def small_files():  # every file this process writes is cut at 40 bytes: EFBIG, as a full disk would
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (40, 40))
    with open(tmp_path / "out.txt", "w") as out:
        r = run_to(out, "--replay", str(log), "--images", preexec_fn=small_files)
    one_error_line(r, 1, f"{log.parent / 'sample-5.png'}: File too large")
    assert sorted(p.name for p in log.parent.iterdir()) == ["events.jsonl"]
    assert (tmp_path / "out.txt").read_text() == ""
