"""The event protocol (common/events.py): docs/events.md says what the code does, the writer refuses what the
protocol does not allow, and every reader path decodes a log the same way."""
from __future__ import annotations

import base64
import json
import math
import re
import sys
from pathlib import Path

import msgspec.inspect as mi
import pytest

from common import events as E
from common.reader import Follower, ReadStats, decode_block, read_events
from common.state import RunState

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "events.md"
FIXTURES = [p for p in (ROOT / "tests" / "fixtures").rglob("events.jsonl")]
NESTED = (E.Layer, E.MemoryTotals, E.MethodMemory, E.MemorySnapshot, E.Gpu, E.Cpu, E.Rank, E.Experts, E.Image,
          E.Grid, E.Array)


def render(t) -> str:
    """A field's type as docs/events.md spells it."""
    if isinstance(t, mi.UnionType):
        types = [x for x in t.types if not isinstance(x, mi.NoneType)]
        if {type(x) for x in types} == {mi.FloatType, mi.LiteralType}:
            return "number"
        return " or ".join(render(x) for x in types)
    if isinstance(t, mi.LiteralType):
        return " or ".join(f'"{v}"' for v in sorted(t.values))
    if isinstance(t, mi.ListType):
        return f"list of {render(t.item_type)}"
    if isinstance(t, mi.DictType):
        return "object"
    if isinstance(t, mi.TypedDictType):
        return t.cls.__name__
    return {mi.IntType: "int", mi.FloatType: "float", mi.StrType: "string", mi.BoolType: "bool"}[type(t)]


def doc_tables() -> dict[str, dict[str, tuple[str, bool]]]:
    """{section title: {field: (type, required)}} for every field table of the page."""
    tables, title = {}, None
    for line in DOC.read_text().splitlines():
        m = re.match(r"^#{2,3} `?([A-Za-z_ ]+?)`?$", line)
        if m:
            title = m.group(1)
            continue
        m = re.match(r"^\| `(\w+)` \| (.+?) \| (yes|) \| (.*) \|$", line)
        if m and title is not None:
            assert m.group(4).strip(), f"docs/events.md: {title}.{m.group(1)} has no meaning"
            tables.setdefault(title, {})[m.group(1)] = (m.group(2), m.group(3) == "yes")
    return tables


def code_table(cls) -> dict[str, tuple[str, bool]]:
    return {f.name: (render(f.type), f.required) for f in mi.type_info(cls).fields if f.name not in ("v", "time")}


def test_every_event_type_and_field_in_the_code_is_on_the_doc_page_and_nothing_else():
    tables = doc_tables()
    for kind, cls in E.EVENT_TYPES.items():
        assert tables.get(kind) == code_table(cls), f"docs/events.md `{kind}` differs from common/events.py"
    for td in NESTED:
        assert tables.get(td.__name__) == code_table(td), f"docs/events.md {td.__name__} differs from the code"
    documented = set(tables) - {"Every event"}
    assert documented == set(E.EVENT_TYPES) | {td.__name__ for td in NESTED}
    assert set(tables["Every event"]) == {"v", "type", "time"}


def test_the_commands_on_the_doc_page_are_the_protocols():
    text = DOC.read_text().split("## Commands", 1)[1]
    assert re.findall(r"^\| `(\w+)` \|", text, re.M) == list(E.COMMANDS)


def test_a_doc_table_that_drifts_from_the_code_is_caught(tmp_path, monkeypatch):
    drifted = tmp_path / "events.md"
    drifted.write_text(DOC.read_text().replace("| `grad_norm` | float |", "| `grad_norm` | int |"))
    monkeypatch.setattr(sys.modules[__name__], "DOC", drifted)
    with pytest.raises(AssertionError, match="`step`"):
        test_every_event_type_and_field_in_the_code_is_on_the_doc_page_and_nothing_else()


# --- writing -----------------------------------------------------------------------------------------------

def test_the_writer_refuses_unknown_types_undeclared_fields_and_wrong_types():
    with pytest.raises(E.ProtocolError, match="unknown event type"):
        E.encode("stepp", {"step": 1, "loss": 1.0}, 0.0)
    with pytest.raises(E.ProtocolError, match="has no field.* los"):
        E.encode("step", {"step": 1, "loss": 1.0, "los": 2.0}, 0.0)
    with pytest.raises(E.ProtocolError, match="Expected `int`"):
        E.encode("step", {"step": "1", "loss": 1.0}, 0.0)
    with pytest.raises(E.ProtocolError, match="required field `loss`"):
        E.encode("step", {"step": 1}, 0.0)


def test_non_finite_numbers_travel_as_strings_and_come_back_as_floats():
    line = E.encode("step", {"step": 3, "loss": float("nan"), "grad_norm": float("inf"), "lr": 1e-3}, 5.0)
    assert json.loads(line) == {"v": 1, "type": "step", "time": 5.0, "step": 3, "loss": "nan", "grad_norm": "inf",
                                "lr": 1e-3}
    ev = E.decode(line[:-1])
    assert math.isnan(ev.loss) and ev.grad_norm == math.inf and ev.lr == 1e-3


def every_kind_of_event() -> list[tuple[str, dict]]:
    data = base64.b64encode(bytes(range(12))).decode()
    return [
        ("run_start", {"run_id": "r", "preset": "nanogpt", "arch": "gpt", "task": "lm", "config": {"a": {"b": 1}},
                       "n_params": 10, "device": "cpu", "profile": "cpu", "pid": 7, "unit": "tokens", "max_steps": 9,
                       "world_size": 1, "resumed_from": None, "torch": "2.13.0", "amp_dtype": "float32"}),
        ("step", {"step": 1, "loss": 2.5, "lr": 1e-3, "grad_norm": 0.5, "tokens": 64, "throughput": 10.0,
                  "elapsed": 0.1, "max_steps": 9, "ranks": [{"rank": 0, "throughput": 5.0, "step_ms": 1.0}]}),
        ("eval", {"step": 1, "val_loss": 2.4, "metrics": {"accuracy": 0.5, "unit": "x"},
                  "experts": {"counts": [1, 2], "balance_loss": 0.1, "dropped": 0, "per_layer": [[1, 2]]}}),
        ("sample", {"step": 1, "kind": "image", "image": {"h": 2, "w": 2, "c": 3, "data": data},
                    "classes": ["0", 1], "grid": {"rows": 1, "cols": 1, "cell_h": 2, "cell_w": 2, "pad": 0},
                    "sampler": "ddim-20", "guidance": 1.5, "prompt": "p"}),
        ("memory", {"step": 0, "layers": [{"name": "h.0", "activation_bytes": 4, "param_bytes": 8}],
                    "totals": {"params": 8, "grads": 8, "optimizer": 16, "activations": 4, "peak_allocated": None},
                    "budget_bytes": 100}),
        ("system", {"cpu": {"util_pct": 50.0, "rss": 1, "ram_used": 2, "ram_total": 3, "cores": 2},
                    "nvml": "NVMLError_LibraryNotFound"}),
        ("checkpoint", {"step": 1, "path": "ckpt.pt", "reason": "interval"}),
        ("kernel", {"name": "rmsnorm", "shape": [4, 8], "dtype": "float32", "ok": True, "max_abs_err": 1e-7,
                    "torch_ms": 1.0, "triton_ms": 0.5, "speedup": 2.0}),
        ("internals", {"step": 1, "arch": "gpt", "probe": "held-out text window", "tokens": ["a", "⏎"],
                       "arrays": [{"name": "attention", "shape": [1, 1, 2, 2], "data": [1.0, 0.0, 0.25, 0.75],
                                   "dims": ["layer", "head", "query", "key"], "labels": ["h.0"]},
                                  {"name": "loss_by_t", "shape": [2], "data": [0.5, 0.25], "lo": 0.0, "hi": 1000.0,
                                   "cells": ["a", "b"]}]}),
        ("log", {"level": "info", "message": "paused at step 1", "state": "paused"}),
        ("run_end", {"status": "completed", "step": 1, "metrics": {"best_val_loss": 2.4, "unit": "tokens"},
                     "error": None, "exit_code": 0}),
    ]


def test_every_event_type_round_trips_through_the_line_unchanged():
    assert {k for k, _ in every_kind_of_event()} == set(E.EVENT_TYPES)
    for kind, fields in every_kind_of_event():
        line = E.encode(kind, fields, 1.0)
        ev = E.decode(line[:-1])
        assert type(ev) is E.EVENT_TYPES[kind] and ev.type == kind and ev.time == 1.0
        assert json.loads(line) == {"v": 1, "type": kind, "time": 1.0, **fields}
        for name, value in fields.items():
            got = getattr(ev, name)
            assert got == value or (isinstance(value, int) and got == float(value)), (kind, name)


def test_an_image_payload_shorter_than_its_size_is_a_bad_event():
    data = base64.b64encode(bytes(11)).decode()
    ev = E.convert({"type": "sample", "step": 1, "kind": "image", "image": {"h": 2, "w": 2, "c": 3, "data": data}})
    assert isinstance(ev, E.Invalid) and "h*w*c" in ev.reason


def test_commands_are_json_lines_and_nothing_else_is_a_command():
    assert E.encode_command("pause") == b'{"cmd":"pause"}\n'
    assert [E.decode_command(x) for x in ('{"cmd": "stop"}', "sample\n", '{"cmd": "explode"}', "{[", "")] == \
        ["stop", "sample", None, None, None]
    with pytest.raises(E.ProtocolError):
        E.encode_command("explode")


# --- reading -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("log", FIXTURES, ids=lambda p: p.parent.name)
def test_every_line_of_the_recorded_runs_decodes_as_a_valid_known_event(log):
    stats = ReadStats()
    evs = list(read_events(log, stats))
    assert evs and stats.skipped == 0 and not stats.torn_tail
    assert all(isinstance(ev, E.Event) for ev in evs), [ev for ev in evs if not isinstance(ev, E.Event)][:1]


def test_the_fast_path_and_the_line_by_line_path_read_the_same_events():
    log = max(FIXTURES, key=lambda p: p.stat().st_size)
    lines = log.read_bytes().rstrip(b"\n").split(b"\n")
    fast = decode_block(b"\n".join(lines), ReadStats())
    bad = b'{"v": 1, "type": "step", "step": "x", "loss": 1}'
    slow_stats = ReadStats()
    slow = decode_block(b"\n".join(lines + [bad, b"not json", b'{"v": 1, "type": "hologram"}']), slow_stats)
    assert [E.as_dict(e) for e in fast] == [E.as_dict(e) for e in slow[:len(fast)]]
    assert [type(e) for e in slow[len(fast):]] == [E.Invalid, E.Unknown]
    assert slow_stats.skipped == 1 and slow_stats.reasons == {"not JSON": 1}
    s = RunState().apply_all(slow)
    assert s.bad_events == 1 and s.unknown_types == {"hologram": 1}


def test_a_follower_reads_a_log_written_a_byte_at_a_time_exactly_once(tmp_path):
    src = max(FIXTURES, key=lambda p: p.stat().st_size).read_bytes()
    log = tmp_path / "events.jsonl"
    f = Follower(log)
    got = []
    with open(log, "wb") as out:
        for i in range(0, len(src), 97):
            out.write(src[i:i + 97])
            out.flush()
            got += f.poll()
    got += f.finish()
    assert [E.as_dict(e) for e in got] == [E.as_dict(e) for e in read_events(log)]
    assert f.stats.skipped == 0 and not f.stats.torn_tail


def test_the_reducer_takes_dicts_and_typed_events_alike():
    a = RunState().apply_all([{"type": "step", "step": 1, "loss": 2.0}, {"type": "eval", "step": 1, "val_loss": 1.5}])
    b = RunState().apply_all([E.Step(step=1, loss=2.0), E.Eval(step=1, val_loss=1.5)])
    assert (a.step, a.loss, a.best_val, a.bad_events) == (b.step, b.loss, b.best_val, b.bad_events) == (1, 2.0, 1.5, 0)


def test_non_finite_numbers_come_back_as_floats_on_every_read_path(tmp_path):
    lines = [E.encode("step", {"step": i, "loss": float("nan") if i == 2 else 1.0, "lr": float("inf")}, 1.0)
             for i in (1, 2)]
    log = tmp_path / "events.jsonl"
    log.write_bytes(b"".join(lines))
    for evs in (list(read_events(log)), decode_block(b"".join(lines)[:-1], ReadStats()),
                [E.decode(l[:-1]) for l in lines], [E.convert(json.loads(l)) for l in lines]):
        assert [type(e.loss) for e in evs] == [float, float] and math.isnan(evs[1].loss)
        assert [e.lr for e in evs] == [math.inf, math.inf]


def test_a_newer_schema_on_the_last_line_without_its_newline_is_noted(tmp_path):
    log = tmp_path / "events.jsonl"
    log.write_bytes(E.encode("step", {"step": 1, "loss": 1.0}, 1.0) + b'{"v": 2, "type": "step", "step": 2, "loss": 1}')
    stats = ReadStats()
    assert [e.step for e in read_events(log, stats)] == [1, 2]
    assert stats.newer_version == 2 and not stats.torn_tail


def test_an_image_payload_that_is_not_base64_is_a_bad_event():
    ev = E.convert({"type": "sample", "step": 1, "kind": "image", "image": {"h": 1, "w": 1, "c": 3, "data": "!!!!"}})
    assert isinstance(ev, E.Invalid) and "base64" in ev.reason


def test_the_writer_writes_numpy_scalars_and_string_subclasses_as_plain_values():
    import numpy as np

    class Version(str):
        pass
    line = E.encode("step", {"step": np.int64(3), "loss": np.float32(0.5), "lr": np.float64("nan")}, 1.0)
    assert json.loads(line) == {"v": 1, "type": "step", "time": 1.0, "step": 3, "loss": 0.5, "lr": "nan"}
    assert json.loads(E.encode("run_start", {"torch": Version("2.13.0")}, 1.0))["torch"] == "2.13.0"


def test_a_kernel_event_as_a_dict_holds_only_the_fields_its_line_had():
    d = E.as_dict(E.decode(b'{"v": 1, "type": "kernel", "name": "gelu", "torch_ms": 1.5}'))
    assert d == {"v": 1, "type": "kernel", "name": "gelu", "torch_ms": 1.5}
