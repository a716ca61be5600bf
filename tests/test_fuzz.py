"""Property-based fuzzing: the event reader, the reducer and the preset loader never crash on any input."""
from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cockpit.report import report
from common.reader import ReadStats, read_events
from common.state import RunState
from trainers import config

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12)
event_types = st.sampled_from(["run_start", "step", "eval", "sample", "memory", "system", "checkpoint",
                               "kernel", "run_end", "log", "other"])
events = st.builds(lambda t, extra, step: {"v": 1, "type": t, "time": 1.0, "step": step, **extra},
                   event_types, st.dictionaries(st.sampled_from(
                       ["loss", "val_loss", "lr", "tokens", "layers", "totals", "gpus", "cpu", "status", "kind",
                        "text", "image", "name", "message", "metrics", "config", "resumed_from", "pid",
                        "experts", "error", "level", "path"]), json_values, max_size=6),
                   st.one_of(st.integers(-5, 50), st.text(max_size=3), st.none()))


@settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(st.binary(max_size=200), events.map(lambda e: json.dumps(e).encode())), max_size=30))
def test_reader_reducer_and_report_never_crash(tmp_path_factory, lines):
    path = tmp_path_factory.mktemp("fuzz") / "events.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    if path.stat().st_size == 0 or not path.read_bytes().strip():
        return
    stats = ReadStats()
    state = RunState().apply_all(read_events(path, stats))
    assert stats.events + stats.skipped <= stats.lines
    text = report(str(path), state, stats, color=False)
    assert "steps" in text


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.lists(events, max_size=40))
def test_reducer_accepts_any_event_sequence(evs):
    s = RunState().apply_all(evs)
    assert s.events == len(evs)
    assert len(s.train.steps) == len(s.train.values) == len(s.train.units) == len(s.train.times)
    assert s.train.steps == sorted(s.train.steps)


yaml_text = st.one_of(
    st.text(max_size=200),
    st.dictionaries(st.sampled_from(["name", "arch", "task", "model", "train", "data", "profiles", "device",
                                     "kernels", "vram_budget_gb", "bogus"]),
                    json_values, max_size=6).map(json.dumps))


@settings(max_examples=200, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(yaml_text, st.lists(st.text(max_size=30), max_size=3))
def test_preset_loader_only_ever_raises_config_error(tmp_path, text, overrides):
    p = tmp_path / "fuzz.yaml"
    p.write_text(text, encoding="utf-8")
    try:
        cfg = config.load(str(p), overrides, has_cuda=False)
    except config.ConfigError as e:
        assert "\n" not in str(e).strip()
        return
    assert cfg["profile"] == "cpu" and isinstance(cfg["train"]["max_steps"], int)
