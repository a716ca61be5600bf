"""Comparing runs (cockpit/compare.py): `cockpit --replay A B C` prints one overlaid chart and one table."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from cockpit.compare import (
    compare_chart,
    compare_report,
    compare_rows,
    cut_middle,
    diff_rows,
    fit_rows,
    peak_memory,
    run_label,
    unique_labels,
)
from common.reader import ReadStats
from common.state import RunState, load_state

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures" / "runs"
LOGS = [FIXTURES / n / "events.jsonl" for n in ("nanogpt-completed", "mingpt-stopped", "nanogpt-killed")]
IDS = ["nanogpt-20261121-054734-15ad", "mingpt-20261121-054750-83f8", "nanogpt-20261121-054810-795f"]


def loaded(paths=LOGS):
    out = []
    for p in paths:
        stats = ReadStats()
        out.append((str(p), load_state(p, stats), stats))
    return out


def states():
    return [s for _, s, _ in loaded()]


def replay(*args):
    return subprocess.run([sys.executable, "-m", "cockpit", "--replay", *map(str, args)], capture_output=True,
                          text=True, cwd=REPO, stdin=subprocess.DEVNULL, timeout=60,
                          env={**os.environ, "COLUMNS": "120"})


def test_replaying_three_fixture_logs_prints_one_chart_and_one_table():
    p = replay(*LOGS)
    assert p.returncode == 0, p.stderr
    out = p.stdout
    assert "\x1b[" not in out                                  # no TTY: plain text
    assert out.count("┌") == 1 and out.count("└") == 1         # one chart frame
    assert len(re.findall(r"^\s+loss\s*$", out, re.M)) == 1     # one chart title
    assert len(re.findall(r"^best val loss ", out, re.M)) == 1  # one table
    header = next(l for l in out.splitlines() if "15ad" in l and "83f8" in l and "795f" in l)
    assert header.index("15ad") < header.index("83f8") < header.index("795f")   # a column per run, in order
    for rid in IDS:   # every run in the legend, with its preset
        preset, short = rid.split("-", 1)
        assert re.search(rf"^  .*\b(train|val)\b.*{preset} {short}$", out, re.M), rid


def test_the_table_holds_the_numbers_a_learner_compares():
    out = replay(*LOGS).stdout
    row = {l.split("  ")[0]: l for l in out.splitlines() if "  " in l}
    assert re.search(r"3\.7370 @ 20\s+4\.0612 @ 10\s+3\.3242 @ 12$", row["best val loss"])
    assert re.search(r"completed\s+stopped\s+killed$", row["status"])
    assert re.search(r"905\.5\s+605\.7\s+305\.1$", row["tokens/s"])
    assert "(sum)" in row["peak memory"]
    assert "activations saved for backward + params + grads + optimizer state" in out   # the tag is explained


def test_the_table_lists_only_the_config_keys_that_differ():
    out = replay(*LOGS).stdout
    keys = {l.split()[0] for l in out.splitlines() if re.match(r"^(model|train|data)\.", l)}
    assert {"model.n_embd", "train.lr", "train.max_steps", "model.dropout", "model.embd_pdrop"} <= keys
    assert "model.n_layer" not in keys and "data.tokenizer" not in keys and "train.batch_size" not in keys
    lr = next(l for l in out.splitlines() if l.startswith("train.lr "))
    assert lr.split()[1:] == ["0.002", "0.001", "0.003"]
    dropout = next(l for l in out.splitlines() if l.startswith("model.dropout "))
    assert dropout.split()[1:] == ["0", "-", "0"]   # minGPT has no such key


def test_a_bad_log_among_the_compared_ones_is_bad_input():
    p = replay(LOGS[0], FIXTURES / "no-such-run" / "events.jsonl")
    assert p.returncode == 2
    assert p.stderr.startswith("cockpit: error:") and "no-such-run" in p.stderr


def test_compare_rows_has_a_header_and_a_cell_per_run_in_every_row():
    rows = compare_rows(states())
    assert rows[0] == ["", "nanogpt 20261121-054734-15ad", "mingpt 20261121-054750-83f8",
                       "nanogpt 20261121-054810-795f"]
    assert all(len(r) == 4 for r in rows)
    names = [r[0] for r in rows]
    assert names[1:4] == ["arch", "status", "steps"]
    assert "best val loss" in names and "tokens/s" in names and "peak memory" in names
    assert "description" not in names and "name" not in names


def test_runs_with_identical_configs_have_no_difference_rows_and_the_report_says_so():
    same = loaded([LOGS[0], LOGS[0]])
    assert diff_rows([s for _, s, _ in same]) == []
    text = compare_report(same, color=False, width=100)
    assert "(the runs' configs are identical)" in text
    assert unique_labels([s for _, s, _ in same]) == ["nanogpt 20261121-054734-15ad", "nanogpt 20261121-054734-15ad (2)"]


def test_peak_memory_is_the_cuda_peak_when_measured_and_the_labelled_sum_on_cpu():
    cpu = load_state(LOGS[0])
    nbytes, kind = peak_memory(cpu)
    totals = cpu.memory_history[0][1]
    assert kind == "sum"
    assert nbytes == totals["activations"] + totals["params"] + totals["grads"] + totals["optimizer"]
    gpu = RunState()
    for step, peak in ((0, 3 << 30), (500, 5 << 30)):
        gpu.apply({"type": "memory", "time": 1.0, "step": step, "layers": [],
                   "totals": {"params": 1, "grads": 1, "optimizer": 2, "activations": 9, "peak_allocated": peak}})
    assert peak_memory(gpu) == (float(5 << 30), "allocator")
    assert peak_memory(RunState()) == (None, "")
    rows = {r[0]: r[1:] for r in compare_rows([gpu, cpu])}
    assert rows["peak memory"][0] == "5.0 GiB (CUDA)" and rows["peak memory"][1].endswith("(sum)")


def test_the_chart_keeps_runs_apart_without_colour_and_draws_each_in_its_own_colour_with_it():
    pairs = list(zip(unique_labels(states()), states()))
    plain = compare_chart(pairs, width=80, height=16, color=False)
    assert "\x1b[" not in plain
    for train_m, val_m in (("•", "o"), ("+", "#"), ("x", "%")):
        assert f"{train_m * 2} train  {val_m} val" in plain
    coloured = compare_chart(pairs, width=80, height=16, color=True)
    assert {"38;5;39", "38;5;208", "38;5;40"} <= set(re.findall(r"38;5;\d+", coloured))


@pytest.mark.parametrize("axis,label", [("tokens", "tokens"), ("time", "seconds")])
def test_the_chart_x_axis_can_be_tokens_or_wall_time(axis, label):
    pairs = list(zip(unique_labels(states()), states()))
    text = compare_chart(pairs, width=80, height=16, x_axis=axis)
    assert re.search(rf"^\s+{label}\s*$", text, re.M)
    ticks = text.split("└")[1].splitlines()[1].split()
    if axis == "tokens":   # the longest run saw 5120 tokens
        assert float(ticks[-1]) == pytest.approx(5120, rel=0.01)


def test_smoothing_is_applied_to_every_run_and_named_in_the_title():
    pairs = list(zip(unique_labels(states()), states()))
    raw = compare_chart(pairs, width=80, height=16)
    smooth = compare_chart(pairs, width=80, height=16, smoothing=0.8)
    assert "EMA smoothing 0.8" in smooth and raw != smooth


def test_runs_without_loss_data_say_so_instead_of_an_empty_chart():
    empty = RunState()
    empty.apply({"type": "run_start", "time": 1.0, "run_id": "gpt-x", "preset": "gpt", "config": {}})
    assert compare_chart([("a", empty), ("b", RunState())]) == "(no loss data yet)"
    assert run_label(empty) == "gpt x"


def test_the_report_notes_a_failed_run_and_a_damaged_log(tmp_path):
    lines = LOGS[1].read_text().splitlines()
    end = json.loads(lines[-1])
    end.update(status="failed", error="OutOfMemoryError: CUDA out of memory\ntraceback...")
    bad = tmp_path / "bad" / "events.jsonl"
    bad.parent.mkdir()
    bad.write_text("\n".join(lines[:-1] + ["garbage", json.dumps(end)]) + "\n")
    text = compare_report(loaded([LOGS[0], bad]), color=False, width=100)
    assert "failed: OutOfMemoryError: CUDA out of memory" in text
    assert "skipped 1 of" in text


@pytest.mark.parametrize("width, headers", [
    (116, ["nanogpt 20261121-054734-15ad", "mingpt 20261121-054750-83f8", "nanogpt 20261121-054810-795f"]),
    (76, ["nanogpt …15ad", "mingpt …83f8", "nanogpt …795f"]),
])
def test_the_tui_table_fits_three_runs_in_the_width_each_run_told_apart_by_its_ids_end(width, headers):
    rows = compare_rows(states())
    widths, fitted = fit_rows(rows, width, padding=2)
    assert sum(widths) + 2 * len(widths) <= width                      # no run's column cut off the screen
    assert fitted[0][1:] == headers
    assert len(set(widths[1:])) == 1 and all(len(c) <= w for r in fitted for c, w in zip(r, widths))
    row = {r[0]: r[1:] for r in fitted}
    assert row["best val loss"] == ["3.7370 @ 20", "4.0612 @ 10", "3.3242 @ 12"]   # the numbers whole
    assert row["train.lr"] == ["0.002", "0.001", "0.003"]


def test_a_cut_label_keeps_its_preset_and_the_end_of_its_run_id():
    assert cut_middle("nanogpt 20261121-054927-5a93", 28) == "nanogpt 20261121-054927-5a93"
    assert cut_middle("nanogpt 20261121-054927-5a93", 22) == "nanogpt …054927-5a93"
    assert cut_middle("nanogpt 20261121-054927-5a93 (2)", 20) == "nanogpt …5a93 (2)"
    assert cut_middle("train.checkpoint_interval", 19) == "train.che…_interval"
