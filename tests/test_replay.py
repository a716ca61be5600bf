"""`cockpit --replay`: a report from any log, skipped lines counted, bad files one clear line, no torch."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys

import pytest

from tests.conftest import ROOT, TINY_GPT, cockpit, train_in_process


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    log = tmp_path_factory.mktemp("rec") / "events.jsonl"
    train_in_process("nanogpt", *TINY_GPT, "train.max_steps=20", "train.eval_interval=10", log=log)
    return log


def test_report_has_summary_chart_samples_memory_and_system(recorded):
    r = cockpit("--replay", str(recorded))
    assert r.returncode == 0, r.stderr
    out = r.stdout
    for fragment in ("preset   nanogpt", "params", "device cpu", "steps    20/20", "status completed",
                     "best val", "tok/s", "wall", "loss", "--- sample @ step 20",
                     "per-layer activation memory", "transformer.h.0", "no NVIDIA GPU", "CPU util"):
        assert fragment in out, fragment
    assert "\x1b[" not in out  # no colour codes without a TTY


def test_torn_garbage_and_unknown_lines_replay_and_are_counted(recorded, tmp_path):
    log = tmp_path / "damaged.jsonl"
    shutil.copy(recorded, log)
    with open(log, "a") as f:
        f.write("this is not json\n")
        f.write(json.dumps({"v": 1, "type": "future_event", "time": 1.0}) + "\n")
        f.write('{"v": 1, "type": "step", "step": 21, "lo')  # torn by a kill
    r = cockpit("--replay", str(log))
    assert r.returncode == 0, r.stderr
    assert "skipped 1 of" in r.stdout and "1 not JSON" in r.stdout
    assert "last line torn" in r.stdout
    assert "unknown event types: future_event (1)" in r.stdout


@pytest.mark.parametrize("make, fragment", [
    (lambda p: None, "no such log file"),
    (lambda p: p.write_text(""), "log is empty"),
    (lambda p: p.write_text((ROOT / "README.md").read_text()),
     "not a cockpit event log: no line of it is an event (skipped"),
    (lambda p: p.write_text('{"v": 1, "type": "step", "step": "x"}\n{"a": 1}\n'), "not a cockpit event log"),
])
def test_missing_or_empty_log_exits_2_with_one_line(tmp_path, make, fragment):
    p = tmp_path / "events.jsonl"
    make(p)
    r = cockpit("--replay", str(p))
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cockpit: error:") and fragment in lines[0]


def test_replay_does_not_import_torch(recorded):
    r = subprocess.run([sys.executable, "-X", "importtime", "-m", "cockpit", "--replay", str(recorded)],
                       capture_output=True, text=True, cwd=ROOT, stdin=subprocess.DEVNULL)
    assert r.returncode == 0
    imported = {line.split("|")[-1].strip() for line in r.stderr.splitlines() if line.startswith("import time:")}
    assert "cockpit.report" in imported
    assert not any(name == "torch" or name.startswith("torch.") for name in imported)


def test_a_non_finite_val_loss_replays_with_a_chart(recorded, tmp_path):
    log = tmp_path / "nan.jsonl"
    shutil.copy(recorded, log)
    with open(log, "a") as f:  # a diverged eval between finite ones: plotext cannot place an infinite point
        for step, val in ((21, "inf"), (22, 2.5)):
            f.write(json.dumps({"v": 1, "type": "eval", "time": 2e9, "step": step, "val_loss": val}) + "\n")
    r = cockpit("--replay", str(log))
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr and "loss" in r.stdout


def test_watch_of_a_log_a_starting_trainer_just_created_waits_for_its_events(tmp_path):
    """`cockpit watch` right after the trainer created its (still empty) log: the UI opens and waits."""
    from cockpit.cli import main

    log = tmp_path / "events.jsonl"
    log.write_text("")
    opened = []
    import cockpit.cli as cli
    real = cli.tui
    cli.tui = lambda **kw: opened.append(kw) or 0
    try:
        assert main(["watch", str(log)]) == 0
    finally:
        cli.tui = real
    assert opened == [{"watch": str(log)}]


def test_the_moe_balance_loss_is_printed_like_a_loss_not_with_every_digit(recorded, tmp_path):
    log = tmp_path / "moe.jsonl"
    shutil.copy(recorded, log)
    with open(log, "a") as f:
        f.write(json.dumps({"v": 1, "type": "eval", "time": 2e9, "step": 21, "val_loss": 2.5,
                            "experts": {"counts": [3, 1], "balance_loss": 0.012345678901234567,
                                        "dropped": 1234567}}) + "\n")
    r = cockpit("--replay", str(log), "--color", "never")
    assert r.returncode == 0, r.stderr
    assert "balance loss 0.0123, dropped tokens 1.23M" in r.stdout, r.stdout
    assert "0.012345678" not in r.stdout


def chart_of(report: str) -> tuple[list[str], list[str]]:
    """(the x tick labels under the chart's frame, the legend lines after the axis title)."""
    lines = report.splitlines()
    bottom = next(i for i, line in enumerate(lines) if "└" in line)
    legend = []
    for line in lines[bottom + 3:]:
        if not line.strip():
            break
        legend.append(line)
    return lines[bottom + 1].split(), legend


@pytest.mark.parametrize("axis, last", [("step", "200"), ("tokens", "51200"), ("time", "1:16")])
def test_the_report_ticks_are_round_numbers_ending_where_the_run_ended(axis, last):
    r = cockpit("--replay", str(ROOT / "tests/fixtures/tui/nanogpt-tiny/events.jsonl"), "--x", axis,
                env={"COLUMNS": "100"})
    assert r.returncode == 0, r.stderr
    ticks, _ = chart_of(r.stdout)
    assert ticks[-1] == last, ticks
    if axis != "time":
        assert all(t.isdigit() for t in ticks), ticks                   # no 150.8
        assert all(int(t) % 25 == 0 for t in ticks[:-1]), ticks          # round: 25, 50, ... or 10000, 20000


def test_without_colour_the_report_tells_train_from_val_by_glyph_in_a_legend_below_the_chart():
    r = cockpit("--replay", str(ROOT / "tests/fixtures/tui/nanogpt-tiny/events.jsonl"), env={"NO_COLOR": "1"})
    assert r.returncode == 0 and "\x1b[" not in r.stdout, r.stderr
    _, legend = chart_of(r.stdout)
    (line,) = legend
    train, val = re.fullmatch(r"\s+(\S+) train\s+(\S+) val\s+nanogpt", line).groups()
    assert set(train) & set(val) == set(), line
    plot = r.stdout.split("┌")[1].split("└")[0]
    assert train[0] in plot and val in plot                             # both glyphs are on the chart
    assert "train" not in plot and "val" not in plot                    # and no legend covers it
