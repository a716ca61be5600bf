"""The TUI's pure logic, tested without a terminal: what the picker, the panes, the loss chart and the run
screen's redraw pacing compute (each beside its screen or widget), and the trainer process's end."""
from __future__ import annotations

import math
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from cockpit.presets_info import vram_fits
from cockpit.screens.overrides import validate_overrides
from cockpit.screens.pacing import (
    REDRAW_MAX_S,
    REDRAW_MIN_S,
    RedrawGate,
    frame_interval,
    heavy_render_seconds,
    redraw_interval,
)
from cockpit.screens.picker import filter_presets, preset_cells
from cockpit.screens.run import pane_signatures
from cockpit.series import GrowingArray, SmoothCache, ema, series_for_plot
from cockpit.trainer_proc import failure_event, tail_text
from cockpit.widgets.chart_markers import lr_phase_changes, marker_steps, steps_to_x
from cockpit.widgets.drawing import hbar, pack_words, sparkline
from cockpit.widgets.loss_plot import cycle, nice_ticks, tick_label
from cockpit.widgets.memory_pane import memory_rows
from cockpit.widgets.samples_pane import diff_pair_default, same_prompt_indices, word_diff
from cockpit.widgets.status_line import status_fields
from common.events import Sample
from common.state import RunState

FIXTURES = Path(__file__).parent / "fixtures" / "tui"


def fixture_state(name: str) -> RunState:
    from common.reader import read_events

    return RunState().apply_all(read_events(FIXTURES / name / "events.jsonl"))


# --- picker ------------------------------------------------------------------------------------------

INFOS = [
    {"name": "nanogpt", "arch": "gpt", "task": "lm", "description": "character-level Shakespeare GPT",
     "n_params": 10_750_000, "est_vram_bytes": int(4.5 * 2**30), "vram_budget_gb": 12.0, "profile_here": "cpu"},
    {"name": "dit", "arch": "dit", "task": "diffusion", "description": "Diffusion Transformer on emoji",
     "n_params": 32_470_000, "est_vram_bytes": int(16.4 * 2**30), "vram_budget_gb": 12.0, "profile_here": "cpu"},
    {"name": "broken", "arch": "gpt", "task": "lm", "description": "", "n_params": None, "est_vram_bytes": None,
     "error": "RuntimeError: boom", "vram_budget_gb": 12.0, "profile_here": "cpu"},
]


def test_filter_matches_every_word_in_name_arch_task_or_description():
    assert [i["name"] for i in filter_presets(INFOS, "shakespeare")] == ["nanogpt"]
    assert [i["name"] for i in filter_presets(INFOS, "DIFFUSION emoji")] == ["dit"]
    assert [i["name"] for i in filter_presets(INFOS, "gpt")] == ["nanogpt", "broken"]
    # a name match ranks above a description match
    assert [i["name"] for i in filter_presets(INFOS, "dif")] == ["dit"]
    bitnet = {"name": "bitnet", "arch": "bitnet", "task": "lm", "description": "tracks the nanoGPT curve"}
    assert [i["name"] for i in filter_presets([bitnet, INFOS[0]], "nano")] == ["nanogpt", "bitnet"]
    assert [i["name"] for i in filter_presets(INFOS, "transformer")] == ["dit"]
    assert filter_presets(INFOS, "gpt emoji") == []
    assert len(filter_presets(INFOS, "  ")) == 3


def test_vram_column_marks_presets_that_do_not_fit_the_budget():
    assert vram_fits(INFOS[0]) is True
    assert vram_fits(INFOS[1]) is False
    assert vram_fits(INFOS[2]) is None
    assert preset_cells(INFOS[1]) == ["dit", "dit", "32.47M", "16.4 GiB / 12 GB", "cpu"]
    assert preset_cells(INFOS[2])[3] == "n/a / 12 GB"
    # while the measurement runs, unknown facts show as pending, not as failures
    assert preset_cells({"name": "x", "arch": "gpt"}, measuring=True)[2:] == ["…", "… / 12 GB", "…"]


def test_override_validation_returns_the_configs_one_line_error():
    items, err, cfg = validate_overrides("nanogpt", "train.max_steps=7 model.n_layer=1")
    assert err is None and items == ["train.max_steps=7", "model.n_layer=1"]
    assert cfg["train"]["max_steps"] == 7 and cfg["model"]["n_layer"] == 1
    _, err, _ = validate_overrides("nanogpt", "train.max_stepz=7")
    assert "train.max_stepz" in err and "did you mean 'train.max_steps'" in err and "\n" not in err
    _, err, _ = validate_overrides("nanogpt", "train.max_steps=many")
    assert "must be an integer" in err
    _, err, _ = validate_overrides("nanogpt", 'data.path="unclosed')
    assert "quote" in err


# --- drawing helpers ---------------------------------------------------------------------------------

def test_hbar_fills_in_eighths_and_clamps():
    assert hbar(0.0, 4) == "    "
    assert hbar(1.0, 4) == "████"
    assert hbar(0.5, 4) == "██  "
    assert hbar(1 / 32, 4) == "▏   "
    assert hbar(7.0, 3) == "███"
    assert hbar(float("nan"), 3) == "   "


def test_sparkline_scales_to_the_range_and_keeps_gaps():
    assert sparkline([0, 50, 100], 3, 0, 100) == "▁▅█"
    assert sparkline([1, None, 1], 3) == "▁ ▁"
    assert sparkline(range(100), 5) == "▁▃▅▆█"       # only the last `width` values: 95..99


def test_nice_ticks_are_round_and_cover_the_range():
    assert nice_ticks(1, 200, 5) == [50, 100, 150, 200]
    assert nice_ticks(0, 1, 3) == [0, 0.5, 1]
    assert nice_ticks(256, 51200, 4) == [20000, 40000]
    assert tick_label(51200, "tokens") == "51.2k"
    assert tick_label(90, "time") == "1:30"
    assert tick_label(1500, "step") == "1500"


def test_cycle_wraps_and_starts_over_for_unknown_values():
    assert cycle(("step", "tokens", "time"), "time") == "step"
    assert cycle((0.0, 0.6), 0.3) == 0.0


# --- the loss chart's data ---------------------------------------------------------------------------

def test_lr_phase_changes_find_the_end_of_warmup_and_of_the_decay():
    from trainers.config import load

    t = load("nanogpt", ["train.max_steps=100", "train.warmup_steps=10", "train.lr_decay_steps=80"])["train"]
    # the trainer's schedule (trainers/loop.py lr_at), reproduced without importing torch
    def lr_at(step):
        if step < t["warmup_steps"]:
            return t["lr"] * (step + 1) / (t["warmup_steps"] + 1)
        if step > 80:
            return t["min_lr"]
        ratio = (step - t["warmup_steps"]) / (80 - t["warmup_steps"])
        return t["min_lr"] + 0.5 * (1 + math.cos(math.pi * ratio)) * (t["lr"] - t["min_lr"])
    steps = list(range(1, 101))
    changes = lr_phase_changes(steps, [lr_at(s - 1) for s in steps])
    assert changes == [(11, "warm-up end"), (81, "decay end")]   # lr_at(80) is already min_lr
    assert lr_phase_changes([1, 2, 3], [1e-3, 1e-3, 1e-3]) == []


def test_markers_come_from_the_run_state_at_the_right_x():
    s = fixture_state("nanogpt-resumed")
    m = marker_steps(s)
    assert m["resume"] == [s.resumes[0]] and 0 < s.resumes[0] < 120
    assert [st for st, _ in s.checkpoints] == m["checkpoint"] and 40 in m["checkpoint"]
    assert m["eval"] == s.val.steps and m["lr"]          # warm-up end at least
    # on the tokens axis a marker sits at the tokens seen by its step
    x = steps_to_x(s.train, [s.train.steps[10]], "tokens")
    assert x.tolist() == [s.train.units[10]]


def test_growing_array_and_smooth_cache_extend_incrementally_with_the_same_numbers():
    rng = np.random.default_rng(0)
    values = rng.normal(size=5000).tolist()
    values[100] = float("nan")
    values[200] = float("inf")
    arr, smooth = GrowingArray(), SmoothCache()
    for n in (10, 11, 2000, 5000):
        a = arr.get(values[:n])
        assert np.array_equal(a, np.asarray(values[:n]), equal_nan=True)
        assert np.allclose(smooth.get(a, 0.9), ema(values[:n], 0.9), equal_nan=True)
    # a changed history (a resumed run replaced points) is recomputed when the epoch changes
    values[10:] = [v + 1 for v in values[10:]]
    assert np.allclose(smooth.get(arr.get(values, epoch=1), 0.9, epoch=1), ema(values, 0.9), equal_nan=True)


def test_series_for_plot_keeps_spikes_and_smooths_on_the_full_data():
    n = 100_000
    y = np.full(n, 2.0)
    spikes = [1234, 50_000, 99_999]
    y[spikes] = 50.0
    xs, ys = series_for_plot(np.arange(n), y, 100)
    assert xs.size <= 200
    for sp in spikes:
        assert sp in xs.tolist() and ys[xs.tolist().index(sp)] == 50.0
    xs, ys = series_for_plot(np.arange(n), y, 100, smoothing=0.9)
    # smoothing happened before downsampling: the drawn maximum is the EMA's, not the raw spike
    assert 2.0 < ys.max() < 10.0
    xs, ys = series_for_plot([1, 2, 3], [1.0, -1.0, 0.5], 10, log_y=True)
    assert xs.tolist() == [1, 3]


# --- panes -------------------------------------------------------------------------------------------

def test_status_fields_show_state_step_loss_rate_and_eta():
    s = fixture_state("nanogpt-tiny")
    fields = dict(status_fields(s))
    assert fields[""] == "completed"
    assert fields["step"] == "200/200"
    assert fields["loss"] == f"{s.loss:.4f}"
    assert fields["ETA"] == "--:--"            # finished: no ETA
    live = RunState()
    live.apply({"type": "run_start", "time": 0.0, "run_id": "r", "max_steps": 100, "config": {}})
    for i in (1, 2, 3):
        live.apply({"type": "step", "time": float(i), "step": i * 10, "loss": 3.0, "lr": 1e-3, "tokens": i * 100,
                    "elapsed": float(i), "throughput": 100.0})
    fields = dict(status_fields(live))
    assert fields["ETA"] == "0:07"             # 20 steps took 2 s; 70 steps to go
    assert fields["tok/s"] == "100.0"
    assert dict(status_fields(live, note="stopping…"))[""] == "stopping…"


def test_memory_rows_read_layers_totals_and_budget():
    s = fixture_state("nanogpt-tiny")
    layers, totals, budget = memory_rows(s)
    assert budget == 12 * 2**30
    names = [n for n, _, _ in layers]
    assert "transformer.h.0" in names
    assert sum(a for _, a, _ in layers) > 0
    assert dict(totals)["params"] == s.memory.totals["params"]


# --- samples -----------------------------------------------------------------------------------------

def test_sample_diff_pairs_the_same_prompt_at_two_steps():
    samples = [Sample(kind="text", step=10, prompt="\n", text="a b"),
               Sample(kind="text", step=20, prompt="ROMEO:", text="x"),
               Sample(kind="text", step=30, prompt="\n", text="a c")]
    assert same_prompt_indices(samples, "\n") == [0, 2]
    assert diff_pair_default(samples[:2]) is None            # the latest prompt appears once
    assert diff_pair_default(samples) == (0, 2)
    assert word_diff("the cat sat", "the dog sat") == [("the ", "same"), ("dog", "new"), (" sat", "same")]


# --- the trainer's end -------------------------------------------------------------------------------

def test_failure_event_carries_the_exit_code_and_the_output_tail(tmp_path):
    out = tmp_path / "trainer.out"
    out.write_text("line 1\nTraceback (most recent call last):\nAssertionError: n_embd must be divisible\n")
    s = RunState()
    s.apply(failure_event(s, 1, out))
    assert s.status == "failed" and s.exit_code == 1
    assert "without writing run_end" in s.error and "AssertionError: n_embd must be divisible" in s.error
    s2 = RunState()
    s2.apply(failure_event(s2, -9, tmp_path / "missing.out"))
    assert "signal 9" in s2.error


def test_tail_text_reads_only_the_end_of_a_big_file(tmp_path):
    p = tmp_path / "big.out"
    p.write_text("".join(f"line {i}\n" for i in range(100_000)))
    tail = tail_text(p, max_lines=3)
    assert tail.splitlines() == ["line 99997", "line 99998", "line 99999"]
    assert tail_text(tmp_path / "nope") == ""


def test_default_log_path_never_reuses_a_run_directory(tmp_path):
    from common.paths import default_log_path

    a = default_log_path("nanogpt", tmp_path)
    a.parent.mkdir(parents=True, exist_ok=True)
    b = default_log_path("nanogpt", tmp_path)
    assert a.name == b.name == "events.jsonl"
    assert a.parent != b.parent and b.parent.name.startswith(a.parent.name)


def test_trainer_process_commands_go_down_the_pipe_as_json_lines(tmp_path):
    """A stand-in trainer echoes its stdin into the log as events; the commands arrive in order."""
    from cockpit.trainer_proc import TrainerProcess

    log = tmp_path / "run" / "events.jsonl"
    script = ("import json,sys\n"
              "f=open(sys.argv[1],'a')\n"
              "for line in sys.stdin:\n"
              "    f.write(json.dumps({'type':'log','level':'info','message':json.loads(line)['cmd']})+'\\n'); f.flush()\n"
              "    if json.loads(line)['cmd']=='stop': break\n")
    proc = TrainerProcess("nanogpt", [], log)
    proc.argv = lambda: [sys.executable, "-c", script, str(log)]
    proc.start()
    for cmd in ("pause", "resume", "sample", "checkpoint", "stop"):
        assert proc.send(cmd) is None
    assert proc.proc.wait(timeout=30) == 0
    got = [ev.message for ev in proc.poll()]
    assert got == ["pause", "resume", "sample", "checkpoint", "stop"]
    assert proc.send("pause") == "the trainer is not running"
    assert proc.send("explode") is not None
    assert (log.parent / "trainer.out").exists()


# --- redraw pacing -------------------------------------------------------------------------------------

def test_a_cpu_run_redraws_its_chart_less_often_than_a_gpu_run_and_within_the_bounds():
    # a 4 ms chart: every 1.3 s beside a CPU trainer (a 13 ms one at the 2 s cap), at the floor beside a GPU one
    assert 1.0 < redraw_interval(0.004, "cpu") < 2.0           # the budget decides ...
    assert redraw_interval(0.013, "cpu") == REDRAW_MAX_S <= 2.0  # ... until the chart would lag the status line
    assert redraw_interval(0.013, "cuda:0") == REDRAW_MIN_S
    assert redraw_interval(1.0, "cpu") == REDRAW_MAX_S          # a huge chart still updates every 2 s
    assert redraw_interval(None, "cpu") == REDRAW_MIN_S         # not measured yet
    assert redraw_interval(float("nan"), None) == REDRAW_MIN_S
    assert frame_interval("cpu") == 1.0 and frame_interval("cuda") == 0.0


def test_the_heavy_panes_are_paced_by_what_they_cost_together():
    assert heavy_render_seconds([0.010, 0.003, None]) == pytest.approx(0.013)   # chart + system pane; memory not drawn yet
    assert heavy_render_seconds([None, float("nan"), 0.0]) is None
    # a chart of 3 ms alone would redraw every 1 s; with a 2 ms system pane beside it, every 1.7 s
    assert redraw_interval(heavy_render_seconds([0.003, 0.002]), "cpu") > redraw_interval(0.003, "cpu")


def test_redraw_gate_holds_a_change_back_until_the_interval_passes_and_never_loses_it():
    now = [100.0]
    gate = RedrawGate(clock=lambda: now[0])
    assert gate.due("loss", (1,), interval=3.0)                 # first draw: at once
    assert not gate.due("loss", (1,), interval=3.0)             # unchanged: nothing to draw
    now[0] += 1.0
    assert not gate.due("loss", (2,), interval=3.0)             # changed, but drawn 1 s ago
    assert gate.pending({"loss": (2,)})                          # ... so the screen keeps ticking it
    now[0] += 2.5
    assert gate.due("loss", (3,), interval=3.0)                 # the newest state is drawn once due
    assert not gate.pending({"loss": (3,)})
    assert gate.due("loss", (4,), interval=3.0, force=True)     # a key press / the run ending: at once
    assert gate.due("status", ("a",)) and gate.due("status", ("b",))  # interval 0: every change


def test_pane_signatures_change_only_for_the_pane_whose_events_arrived():
    s = fixture_state("nanogpt-tiny")
    before = pane_signatures(s)
    s.apply({"v": 1, "type": "system", "time": s.last_time + 1, "cpu": {"util_pct": 50.0}})
    after = pane_signatures(s)
    changed = {k for k in before if before[k] != after[k]}
    assert changed == {"gpu"}
    s.apply({"v": 1, "type": "step", "time": s.last_time + 1, "step": s.step + 1, "loss": 1.0, "lr": 1e-4,
             "tokens": s.units_seen + 10, "throughput": 1.0, "elapsed": s.elapsed + 1})
    changed = {k for k, v in pane_signatures(s).items() if v != after[k]}
    assert changed == {"loss", "metrics", "status"}   # the metrics grid charts each step's lr, grad norm, rate


def test_samples_pane_notices_new_samples_after_the_list_is_capped():
    s = RunState(max_samples=3)
    for i in range(5):
        s.apply({"v": 1, "type": "sample", "time": 1.0 + i, "step": i, "kind": "text", "text": f"s{i}"})
    assert len(s.samples) == 3 and s.counts["sample"] == 5
    sig = pane_signatures(s)["samples"]
    s.apply({"v": 1, "type": "sample", "time": 9.0, "step": 9, "kind": "text", "text": "s9"})
    assert len(s.samples) == 3 and pane_signatures(s)["samples"] != sig


def test_pack_words_breaks_lines_only_between_parts():
    assert pack_words(["params 3 MiB", "grads 3 MiB", "acts 67 MiB"], 26, sep="  ") == \
        ["params 3 MiB  grads 3 MiB", "acts 67 MiB"]
    assert pack_words(["a-very-long-part", "b"], 5) == ["a-very-long-part", "b"]
    assert pack_words([], 10) == [""]


def test_stopping_a_watched_run_never_signals_a_process_that_reused_the_trainers_pid(tmp_path):
    """`x` on a watched log sends SIGTERM to the run_start's pid: only while that pid is still the trainer."""
    from cockpit.trainer_proc import LogSource

    run_started = time.time() - 3600                 # the trainer's run began an hour ago and has ended since
    other = subprocess.Popen(["sleep", "60"])        # a live process, started after that run: the pid was reused
    try:
        why = LogSource(tmp_path / "events.jsonl").send("stop", other.pid, run_started)
        assert why == f"trainer pid {other.pid} is gone"
        assert other.poll() is None                  # still running: it was not signalled
    finally:
        other.kill()
        other.wait()
    trainer = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert LogSource(tmp_path / "events.jsonl").send("stop", trainer.pid, time.time()) is None
        assert trainer.wait(timeout=10) == -15       # the trainer got SIGTERM
    finally:
        if trainer.poll() is None:
            trainer.kill()


def test_a_live_process_that_is_not_python_is_never_taken_for_the_trainer(monkeypatch):
    """A pid reused by another program within the clock slack is told apart by its command line."""
    import psutil

    from common import procs

    class Sleep:
        def __init__(self, pid):
            self.pid = pid

        def status(self):
            return psutil.STATUS_SLEEPING

        def oneshot(self):
            import contextlib
            return contextlib.nullcontext()

        def cmdline(self):
            return ["sleep", "60"]

        def create_time(self):
            return 1000.0

    monkeypatch.setattr(procs.psutil, "Process", Sleep)
    assert procs.pid_alive(4242)
    assert not procs.trainer_alive(4242, started_at=1000.0)
    monkeypatch.setattr(Sleep, "cmdline", lambda self: ["/usr/bin/python3", "-m", "trainers", "tiny"])
    assert procs.trainer_alive(4242, started_at=1000.0)


def test_a_run_whose_end_is_logged_is_not_going_while_its_process_exits():
    """`q` right after `● completed`: the trainer's process may still be exiting; the run is not "still going"."""
    from cockpit.screens.run import RunScreen

    class Exiting:
        launched = True

        def returncode(self):
            return None  # the process has not exited yet

    screen = RunScreen(Exiting())
    screen.state.apply({"v": 1, "type": "run_start", "time": 1.0, "run_id": "r", "preset": "p", "arch": "gpt",
                        "task": "lm", "config": {}, "max_steps": 3})
    assert screen.alive
    screen.state.apply({"v": 1, "type": "run_end", "time": 2.0, "status": "completed", "step": 3})
    assert not screen.alive


def test_stopping_from_the_quit_dialog_leaves_the_checkpoint_and_the_resume_command_on_the_terminal():
    from cockpit.screens.run import stopped_farewell
    from common.state import RunState

    s = RunState()
    s.apply({"v": 1, "type": "run_start", "time": 1.0, "run_id": "r", "preset": "nanogpt", "arch": "gpt",
             "task": "lm", "config": {}, "max_steps": 100})
    s.apply({"v": 1, "type": "checkpoint", "time": 2.0, "step": 40, "path": "/runs/x/ckpt.pt", "reason": "stop"})
    s.apply({"v": 1, "type": "run_end", "time": 3.0, "status": "stopped", "step": 40})
    assert stopped_farewell(s, "/runs/x/events.jsonl") == (
        "cockpit: the run stopped at step 40; checkpoint /runs/x/ckpt.pt; resume with: cockpit train nanogpt "
        "--resume /runs/x")


def test_the_picker_shows_the_full_size_and_the_cpu_profiles_parameters_both_labelled():
    """nanogpt is 10.75M parameters at full size; its CPU profile, what runs here, is 805.50k."""
    from cockpit.presets_info import preset_table
    from cockpit.screens.picker import COLUMNS, preset_cells

    info = {"name": "nanogpt", "arch": "gpt", "task": "lm", "n_params": 10_749_312, "n_params_here": 805_504,
            "est_vram_bytes": 2**30, "vram_budget_gb": 12.0, "profile_here": "cpu"}
    assert COLUMNS[2] == "params full · here" and preset_cells(info)[2] == "10.75M · 805.50k"
    assert preset_cells({**info, "n_params_here": 10_749_312, "profile_here": "full"})[2] == "10.75M"
    table = preset_table([info])
    assert "params (full)" in table and "params here" in table and "805.50k" in table
