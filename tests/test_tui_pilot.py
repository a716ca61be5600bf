"""Pilot tests of the cockpit TUI driving REAL trainer subprocesses (tiny configs on the CPU).

Pick a preset by keys and launch it; the panes fill from the trainer; `p` pauses (steps stop advancing),
`x` stops with a checkpoint and run_end stopped; a trainer that raises shows its traceback and the picker
launches another run afterwards; `q` with a live run asks, and "leave it running" keeps the trainer going.
"""
from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import pytest

from cockpit.app import CockpitApp
from cockpit.screens.picker import PickerScreen
from cockpit.screens.run import RunScreen
from cockpit.widgets.error_pane import ErrorPane
from cockpit.widgets.gpu_pane import GpuPane
from cockpit.widgets.loss_plot import LossPlot
from cockpit.widgets.memory_pane import MemoryPane
from cockpit.widgets.samples_pane import SamplesPane
from cockpit.widgets.status_line import StatusLine

pytestmark = pytest.mark.slow

SIZE = (120, 40)
TINY = ["model.n_layer=1", "model.n_head=2", "model.n_embd=32", "model.block_size=32", "train.batch_size=4",
        "train.eval_iters=2", "train.log_interval=1", "train.system_interval=0.5", "train.sample_tokens=24",
        "train.warmup_steps=2", "train.memory_interval=4"]
# fixed preset facts: the picker does not measure presets in these tests
INFOS = [
    {"name": "mingpt", "arch": "mingpt", "task": "lm", "description": "minGPT on Shakespeare", "n_params": 2_750_000,
     "est_vram_bytes": 4 * 2**30, "vram_budget_gb": 12.0, "profile_here": "cpu"},
    {"name": "nanogpt", "arch": "gpt", "task": "lm", "description": "nanoGPT on Shakespeare", "n_params": 10_750_000,
     "est_vram_bytes": int(4.5 * 2**30), "vram_budget_gb": 12.0, "profile_here": "cpu"},
]


@pytest.fixture
def runs_dir(tmp_path, monkeypatch):
    d = tmp_path / "runs"
    monkeypatch.setenv("COCKPIT_RUNS", str(d))
    return d


async def wait_for(pilot, cond, timeout: float = 90.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        await pilot.pause(0.1)


def run_screens(app) -> list[RunScreen]:
    return [s for s in app.screen_stack if isinstance(s, RunScreen)] + \
        [s for s in getattr(app, "_test_run_screens", []) if s not in app.screen_stack]


def kill_trainers(screens):
    for s in screens:
        if s.source.launched and s.source.returncode() is None:
            s.source.kill()
            s.source.proc.wait(timeout=30)


def text_of(widget) -> str:
    r = widget.render()
    return r.plain if hasattr(r, "plain") else str(r)


def log_events(path: Path) -> list[dict]:
    return [json.loads(l) for l in path.read_text().splitlines() if l.strip()]


async def test_pick_a_preset_by_keys_edit_overrides_and_launch_fills_every_pane(runs_dir):
    app = CockpitApp(presets=INFOS)
    screens = []
    try:
        async with app.run_test(size=SIZE) as pilot:
            await wait_for(pilot, lambda: isinstance(app.screen, PickerScreen), 10, "the picker")
            picker = app.screen
            await pilot.press("slash", *"nano", "enter")          # filter, back to the table
            assert [i["name"] for i in picker.shown] == ["nanogpt"]
            await pilot.press("e")                                  # edit overrides
            await pilot.press(*"train.max_stepz=8", "enter")        # a typo: the one-line error, dialog stays
            await pilot.pause(0.2)
            err = app.screen.query_one("#overrides-error")
            assert "did you mean 'train.max_steps'" in str(err.render())
            inp = app.screen.query_one("#overrides-input")
            inp.value = " ".join(TINY + ["train.max_steps=8", "train.eval_interval=4"])   # (typing it is slow)
            await pilot.press("end", *" train.checkpoint_interval=0", "enter")
            await pilot.pause(0.2)
            assert app.screen is picker and "train.max_steps=8" in picker.overrides["nanogpt"]
            await pilot.press("enter")                              # launch
            await wait_for(pilot, lambda: isinstance(app.screen, RunScreen), 10, "the run screen")
            run = app.screen
            screens.append(run)
            assert run.source.preset == "nanogpt" and "model.n_embd=32" in run.source.overrides
            assert Path(run.source.path).is_relative_to(runs_dir)
            await wait_for(pilot, lambda: run.state.ended, 120, "the run to end")
            await pilot.pause(0.5)
            s = run.state
            assert s.status == "completed", s.error
            assert s.step == 8 and s.val.steps == [0, 4, 8] and s.samples  # eval at start, then every 4
            assert "train" in run.query_one(LossPlot).drawn and "val" in run.query_one(LossPlot).drawn
            assert "transformer.h.0" in text_of(run.query_one(MemoryPane)) or "h.0" in text_of(run.query_one(MemoryPane))
            gpu = text_of(run.query_one(GpuPane))
            assert ("no NVIDIA GPU" in gpu and "CPU" in gpu) or "VRAM" in gpu
            heading = str(run.query_one(SamplesPane).query_one("#sample-heading").render())
            assert "@ step 8" in heading
            status = text_of(run.query_one(StatusLine))
            assert "completed" in status and "step 8/8" in status
            assert app.exit_status == 0
    finally:
        kill_trainers(screens)


async def test_p_pauses_the_trainer_and_x_stops_it_with_a_checkpoint(runs_dir):
    app = CockpitApp(preset="nanogpt", overrides=TINY + ["train.max_steps=100000", "train.eval_interval=100000",
                                                         "train.checkpoint_interval=0"])
    screens = []
    try:
        async with app.run_test(size=SIZE) as pilot:
            await wait_for(pilot, lambda: isinstance(app.screen, RunScreen), 10, "the run screen")
            run = app.screen
            screens.append(run)
            await wait_for(pilot, lambda: run.state.step >= 3, 120, "three steps")
            # the screen's log reading is held while the key is pressed: a tiny step acknowledges a pause
            # within milliseconds, and the screen must be seen saying "pausing…" before it reads that
            run._timer.pause()
            try:
                await pilot.press("p")
                assert "pausing" in text_of(run.query_one(StatusLine))
            finally:
                run._timer.resume()
            await wait_for(pilot, lambda: run.state.status == "paused", 60, "the trainer to pause")
            paused_at = run.state.step
            await pilot.pause(2.0)
            assert run.state.step == paused_at, "steps advanced while paused"
            steps_in_log = [e["step"] for e in log_events(run.source.path) if e["type"] == "step"]
            assert max(steps_in_log) == paused_at
            assert "paused" in text_of(run.query_one(StatusLine))
            await pilot.press("p")                                  # resume
            await wait_for(pilot, lambda: run.state.step > paused_at, 60, "steps after resuming")
            rates = {e["step"]: e["throughput"] for e in log_events(run.source.path) if e["type"] == "step"}
            before = sorted(rates[k] for k in rates if 1 < k <= paused_at)
            # the 2 s pause is not training time: tokens/s right after resuming is not dragged down by it
            assert rates[paused_at + 1] > 0.3 * before[len(before) // 2]
            await pilot.press("x")
            await pilot.pause(0.2)
            assert type(app.screen).__name__ == "ConfirmScreen"      # a stop is asked for first
            assert "resume it later with: cockpit train nanogpt --resume" in str(
                app.screen.query_one("#confirm-box Static").render())
            assert run.state.status == "running"                    # nothing sent yet
            await pilot.press("y")
            await wait_for(pilot, lambda: run.state.ended and run.finished, 60, "the stop")
            s = run.state
            assert s.status == "stopped"
            assert s.checkpoints and Path(s.checkpoints[-1][1]).is_file()
            end = log_events(run.source.path)[-1]
            assert end["type"] == "run_end" and end["status"] == "stopped" and end["exit_code"] == 0
            assert run.source.returncode() == 0
            assert "stopped" in text_of(run.query_one(StatusLine))
    finally:
        kill_trainers(screens)


# An error nothing in the trainer foresees, mid-run: the third training step of the run under crash/ raises
# (a full or unwritable checkpoint location is no such error any more: it ends the run with one line).
CRASH_AT_STEP_3 = """
import sys
if any(arg.endswith("crash/events.jsonl") for arg in sys.argv):
    import torch
    clip, calls = torch.nn.utils.clip_grad_norm_, []
    def crash_at_step_3(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise IsADirectoryError(21, "Is a directory", "ckpt.pt")
        return clip(*args, **kwargs)
    torch.nn.utils.clip_grad_norm_ = crash_at_step_3
"""


async def test_a_trainer_that_raises_shows_its_traceback_and_the_picker_launches_another_run(runs_dir, tmp_path,
                                                                                             monkeypatch):
    run_dir = tmp_path / "crash"
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(CRASH_AT_STEP_3)  # imported by the trainer's Python at start-up
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(hook), os.environ.get("PYTHONPATH")])))
    app = CockpitApp(preset="nanogpt", overrides=TINY + ["train.max_steps=50", "train.checkpoint_interval=3",
                                                         "train.eval_interval=1000"],
                     log=str(run_dir / "events.jsonl"), presets=INFOS)
    screens = []
    try:
        async with app.run_test(size=SIZE) as pilot:
            await wait_for(pilot, lambda: isinstance(app.screen, RunScreen), 10, "the run screen")
            run = app.screen
            screens.append(run)
            await wait_for(pilot, lambda: run.finished, 120, "the trainer to fail")
            await pilot.pause(0.3)
            s = run.state
            assert s.status == "failed" and s.exit_code == 1
            pane = run.query_one(ErrorPane)
            assert pane.has_class("-shown") and pane.display
            shown = str(pane.query_one("#error-text").render())
            assert "Traceback (most recent call last)" in shown and "IsADirectoryError" in shown
            assert "failed (exit 1)" in text_of(run.query_one(StatusLine))
            assert app.exit_status == 1
            await pilot.press("escape")                             # back to the picker; the UI is alive
            await wait_for(pilot, lambda: isinstance(app.screen, PickerScreen), 10, "the picker")
            picker = app.screen
            picker.overrides["nanogpt"] = TINY + ["train.max_steps=3", "train.eval_interval=3",
                                                  "train.checkpoint_interval=0"]
            await pilot.press("j")                                  # mingpt -> nanogpt
            assert picker.highlighted()["name"] == "nanogpt"
            await pilot.press("enter")
            await wait_for(pilot, lambda: isinstance(app.screen, RunScreen) and app.screen is not run, 10,
                           "a second run screen")
            second = app.screen
            screens.append(second)
            await wait_for(pilot, lambda: second.finished, 120, "the second run to end")
            assert second.state.status == "completed" and second.state.step == 3
            assert app.exit_status == 0
    finally:
        kill_trainers(screens)


async def test_a_trainer_that_dies_before_run_end_shows_its_output_and_exit_code(runs_dir):
    app = CockpitApp(preset="nanogpt", overrides=TINY[:2] + ["model.n_embd=32", "model.n_head=3"])
    screens = []
    try:
        async with app.run_test(size=SIZE) as pilot:
            await wait_for(pilot, lambda: isinstance(app.screen, RunScreen), 10, "the run screen")
            run = app.screen
            screens.append(run)
            await wait_for(pilot, lambda: run.finished, 120, "the trainer to exit")
            await pilot.pause(0.3)
            s = run.state
            assert s.status == "failed" and s.exit_code not in (None, 0)
            shown = str(run.query_one(ErrorPane).query_one("#error-text").render())
            assert "without writing run_end" in shown and "trainer.out" in shown
            assert "n_embd" in shown and "n_head" in shown          # the trainer's own words
    finally:
        kill_trainers(screens)


async def test_q_asks_and_leave_running_keeps_the_trainer_writing_its_log_headless(runs_dir):
    app = CockpitApp(preset="nanogpt", overrides=TINY + ["train.max_steps=100000", "train.eval_interval=100000",
                                                         "train.checkpoint_interval=0"])
    screens = []
    try:
        async with app.run_test(size=SIZE) as pilot:
            await wait_for(pilot, lambda: isinstance(app.screen, RunScreen), 10, "the run screen")
            run = app.screen
            screens.append(run)
            await wait_for(pilot, lambda: run.state.step >= 2, 120, "two steps")
            await pilot.press("q")
            await pilot.pause(0.2)
            assert type(app.screen).__name__ == "QuitScreen"
            await pilot.press("escape")                             # cancel: still here, still running
            await pilot.pause(0.2)
            assert app.screen is run and run.alive
            await pilot.press("q")
            await pilot.pause(0.2)
            await pilot.press("l")                                  # leave it running
            await pilot.pause(0.2)
        log = run.source.path
        assert app.farewell and f"cockpit watch {log}" in app.farewell
        assert run.source.returncode() is None, "the trainer died with the UI"
        size = log.stat().st_size
        deadline = time.monotonic() + 60
        while log.stat().st_size == size and time.monotonic() < deadline:
            time.sleep(0.2)
        assert log.stat().st_size > size, "the headless trainer stopped writing its log"
        os.killpg(run.source.pid, signal.SIGTERM)                   # SIGTERM = stop with a checkpoint
        assert run.source.proc.wait(timeout=60) == 0
        assert log_events(log)[-1]["status"] == "stopped"
    finally:
        kill_trainers(screens)


async def test_watch_tails_a_growing_log_and_replays_a_finished_one(tmp_path):
    src = Path(__file__).parent / "fixtures" / "tui" / "nanogpt-tiny" / "events.jsonl"
    lines = src.read_text().splitlines(keepends=True)
    start = json.loads(lines[0])
    start["pid"] = os.getpid()                       # a live writer: this process
    start["time"] = time.time()
    lines[0] = json.dumps(start) + "\n"
    log = tmp_path / "events.jsonl"
    log.write_text("".join(lines[:20]))
    app = CockpitApp(watch=str(log))
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, RunScreen) and app.screen.loaded, 10, "the log")
        run = app.screen
        first = run.state.step
        assert run.state.status == "running" and first > 0
        with log.open("a") as f:
            f.write("".join(lines[20:-1]))
            f.write(lines[-1][:25])                  # half a line: the writer is mid-write
        await wait_for(pilot, lambda: run.state.step == 200, 10, "the new steps")
        assert run.state.status == "running"
        with log.open("a") as f:
            f.write(lines[-1][25:])
        await wait_for(pilot, lambda: run.state.status == "completed", 10, "run_end")
        assert run.state.bad_events == 0
        assert "completed" in text_of(run.query_one(StatusLine))
        await pilot.press("p")                       # commands need a trainer this cockpit launched
        await pilot.pause(0.2)
    replay = CockpitApp(watch=str(src))
    async with replay.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: isinstance(replay.screen, RunScreen) and replay.screen.loaded, 10, "the log")
        assert replay.screen.state.status == "completed" and replay.screen.state.step == 200


async def test_a_live_cpu_run_redraws_the_status_line_every_second_and_the_chart_at_a_paced_rate(tmp_path,
                                                                                                 monkeypatch):
    # A trainer on the CPU shares the cores with the UI: redrawing on every event stalled its threads and
    # cost it ~15% of its speed on 2 cores (BENCHMARKS.md). Step events come every 0.1 s here; the status
    # line follows them once a second, the chart within its interval, and the end of the run at once.
    src = Path(__file__).parent / "fixtures" / "tui" / "nanogpt-tiny" / "events.jsonl"
    lines = src.read_text().splitlines(keepends=True)
    start = json.loads(lines[0])
    start.update(pid=os.getpid(), time=time.time(), device="cpu")
    log = tmp_path / "events.jsonl"
    log.write_text(json.dumps(start) + "\n")
    app = CockpitApp(watch=str(log))
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, RunScreen) and app.screen.loaded, 10, "the log")
        run = app.screen
        plot, status = run.query_one(LossPlot), run.query_one(StatusLine)
        chart_draws, status_draws = [], []
        set_runs, update_status = plot.set_runs, status.update_state
        plot.set_runs = lambda runs: (chart_draws.append(run.state.step), set_runs(runs))
        status.update_state = lambda *a: (status_draws.append(run.state.step), update_status(*a))
        paced = []
        monkeypatch.setattr("cockpit.screens.run.redraw_interval",
                            lambda render_s, device: paced.append((device, render_s)) or 2.0)
        steps = [l for l in lines[1:-1] if '"type":"step"' in l]
        t0 = time.monotonic()
        for i, line in enumerate(steps[:60]):       # a step event every 0.1 s for 6 s
            with log.open("a") as f:
                f.write(line)
            await pilot.pause(0.1)
        took = time.monotonic() - t0
        assert 0.6 * took <= len(status_draws) <= took + 2     # the status line: a frame a second
        assert 2 <= len(chart_draws) <= took / 2.0 + 2           # the chart: paced
        assert {device for device, _ in paced} == {"cpu"}
        # paced by what the chart, memory and system panes measured their redraws to cost together
        costs = [c for _, c in paced if c is not None]
        assert costs and all(0 < c < 5 for c in costs) and plot.render_seconds is not None
        with log.open("a") as f:
            f.write("".join(steps[60:]))
            f.write(lines[-1])                               # run_end: no more pacing
        await wait_for(pilot, lambda: run.state.status == "completed", 10, "run_end")
        await pilot.pause(0.5)
        assert chart_draws[-1] == run.state.step and plot.drawn["train"][0].max() == run.state.step


async def test_view_keys_change_smoothing_log_y_x_axis_markers_and_sample_browsing():
    src = Path(__file__).parent / "fixtures" / "tui" / "nanogpt-tiny" / "events.jsonl"
    app = CockpitApp(watch=str(src))
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, RunScreen) and app.screen.loaded, 10, "the log")
        run = app.screen
        plot = run.query_one(LossPlot)
        await pilot.pause(0.2)
        assert "marker:checkpoint" in plot.drawn and "marker:eval" in plot.drawn
        await pilot.press("e")
        assert plot.smoothing == 0.6 and "EMA 0.6" in str(plot.border_subtitle)
        await pilot.press("l", "t")
        await pilot.pause(0.2)
        assert plot.log_y and plot.x_axis == "tokens"
        xs, _ = plot.drawn["train"]
        assert xs.max() == run.state.train.units[-1]               # the x-axis is tokens now
        await pilot.press("t")
        await pilot.pause(0.2)
        assert plot.x_axis == "time" and plot.drawn["train"][0].max() == run.state.train.times[-1]
        await pilot.press("m")
        await pilot.pause(0.2)
        assert not any(k.startswith("marker:") for k in plot.drawn)
        pane = run.query_one(SamplesPane)
        n = len(run.state.samples)
        await pilot.press("left_square_bracket", "left_square_bracket")
        assert pane.current_index() == n - 3
        assert f"{n - 2}/{n}" in str(pane.query_one("#sample-heading").render())
        await pilot.press("right_square_bracket", "right_square_bracket")
        assert pane.index is None                                    # back to following the latest
        await pilot.press("d")                                       # sample diff: same prompt, two steps
        await pilot.pause(0.2)
        heading = str(pane.query_one("#sample-heading").render())
        a, b = pane.diff
        assert f"step {run.state.samples[a].step} vs step {run.state.samples[b].step}" in heading
        await pilot.press("left_curly_bracket")
        assert pane.diff[1] < b
        await pilot.press("question_mark")
        await pilot.pause(0.2)
        assert type(app.screen).__name__ == "HelpScreen"
        keys = dict(app.screen.rows)
        for key in ("p", "s", "c", "x", "k", "q", "e", "l", "t", "m", "[", "]", "d", "{", "}", "esc", "?"):
            assert key in keys, f"help lacks {key}"
        assert keys["p"] == "Pause/resume" and keys["x"] == "Stop"
        await pilot.press("escape")


async def test_kernels_panel_runs_the_comparison_in_a_subprocess_and_draws_speedups(monkeypatch, tmp_path):
    from cockpit.screens import kernels as kmod

    monkeypatch.setenv("COCKPIT_CACHE", str(tmp_path))             # no results from earlier runs

    events = [{"type": "kernel", "name": "rmsnorm", "shape": [8, 64], "dtype": "float32", "backend": "triton",
               "ok": True, "max_abs_err": 1e-6, "torch_ms": 2.0, "triton_ms": 1.0, "torch_mem": 400, "triton_mem": 100},
              {"type": "kernel", "name": "swiglu", "shape": [8, 64], "dtype": "float32", "backend": "triton",
               "ok": False, "max_abs_err": 0.5, "torch_ms": 1.0, "triton_ms": 2.0, "torch_mem": 100, "triton_mem": 100}]
    calls = []

    def fake_argv(only=None):
        calls.append(only)
        chosen = [e for e in events if only in (None, e["name"])]
        code = "import json,sys\n" + "".join(f"print(json.dumps({e!r}))\n" for e in chosen)
        return [sys.executable, "-c", code]

    monkeypatch.setattr(kmod, "kernels_available", lambda: True)
    app = CockpitApp(presets=INFOS)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause(0.2)
        app.push_screen(kmod.KernelsScreen(argv_for=fake_argv))
        await pilot.pause(0.2)
        screen = app.screen
        await pilot.press("r")                                       # the comparison runs when asked
        await wait_for(pilot, lambda: screen.running is None and len(screen.results) == 2, 30, "the kernels run")
        table = screen.query_one("#kernels-table")
        assert table.row_count == 2
        chart = text_of(screen.query_one("#kernels-chart"))
        assert "2x" in chart and "0.5x" in chart and "75.0% mem" in chart and "FAIL" in chart
        assert "done" in str(screen.query_one("#kernels-status").render())
        await pilot.press("enter")                                   # re-run the highlighted kernel alone
        await wait_for(pilot, lambda: screen.running is None and calls[-1] == "rmsnorm", 30, "the re-run")
        assert calls == [None, "rmsnorm"]
    monkeypatch.setattr(kmod, "kernels_available", lambda: False)
    app = CockpitApp(presets=INFOS)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause(0.2)
        app.push_screen(kmod.KernelsScreen(argv_for=fake_argv))
        await pilot.pause(0.2)
        status = str(app.screen.query_one("#kernels-status").render())
        assert "not available yet" in status and "kernels_cmd.py" in status
        assert len(calls) == 2                                       # nothing was run


async def test_watching_a_run_offers_only_the_keys_that_work_and_x_asks_before_it_signals(tmp_path, monkeypatch):
    """p, s and c go down a launched trainer's stdin: a watched run's footer does not offer them. x sends
    SIGTERM to the watched trainer, and only after a yes."""
    src = Path(__file__).parent / "fixtures" / "tui" / "nanogpt-tiny" / "events.jsonl"
    lines = src.read_text().splitlines(keepends=True)
    start = json.loads(lines[0])
    start["pid"], start["time"] = os.getpid(), time.time()   # a live writer: this process
    log = tmp_path / "events.jsonl"
    log.write_text(json.dumps(start) + "\n" + "".join(lines[1:20]))
    sent = []
    monkeypatch.setattr("cockpit.trainer_proc.LogSource.send", lambda self, cmd, pid, started, prompt=None: sent.append(cmd))
    app = CockpitApp(watch=str(log))
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, RunScreen) and app.screen.loaded, 10, "the log")
        await pilot.pause(0.2)
        shown = {b.binding.action for b in app.screen.active_bindings.values() if b.binding.show and b.enabled}
        assert {"stop", "quit", "help"} <= shown and not {"pause", "sample", "checkpoint"} & shown, shown
        await pilot.press("p", "s", "c")                     # not offered: nothing happens
        await pilot.press("x")
        await pilot.pause(0.2)
        assert type(app.screen).__name__ == "ConfirmScreen" and sent == []
        await pilot.press("n")                               # no: nothing is sent
        await pilot.pause(0.2)
        assert isinstance(app.screen, RunScreen) and sent == []
        await pilot.press("x")
        await pilot.pause(0.2)
        await pilot.press("y")
        await pilot.pause(0.2)
        assert sent == ["stop"]


async def test_the_picker_filter_is_cleared_by_esc_and_home_end_move_in_the_table():
    """`/ zzz Enter Esc` leaves every preset listed (not "no preset matches"); home and end do what Help says;
    Help names each key once."""
    app = CockpitApp(presets=INFOS)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, PickerScreen), 10, "the picker")
        picker = app.screen
        await pilot.press("slash", *"zzz", "enter")
        assert picker.shown == []
        await pilot.press("escape")
        await pilot.pause(0.1)
        assert [i["name"] for i in picker.shown] == [i["name"] for i in INFOS]
        assert "no preset matches" not in text_of(picker.query_one("#preset-description"))
        await pilot.press("end")
        assert picker.highlighted()["name"] == INFOS[-1]["name"]
        await pilot.press("home")
        assert picker.highlighted()["name"] == INFOS[0]["name"]
        await pilot.press("question_mark")
        await pilot.pause(0.2)
        keys = [k for k, _ in app.screen.rows]
        assert keys.count("esc") == 1 and any("home/end" in k for k in keys), keys


FIXTURES = Path(__file__).parent / "fixtures" / "tui"


async def watched(pilot, app) -> RunScreen:
    await wait_for(pilot, lambda: isinstance(app.screen, RunScreen) and app.screen.loaded, 10, "the log")
    await pilot.pause(0.3)
    return app.screen


def shown_lines(widget) -> list[str]:
    """The rows of `widget` as the terminal shows them."""
    from textual.geometry import Region

    return [strip.text for strip in widget.render_lines(Region(0, 0, widget.size.width, widget.size.height))]


@pytest.mark.parametrize("size", [(80, 24), (120, 40), (200, 50)])
async def test_sample_headings_fit_the_pane_at_80_120_and_200_columns(size):
    """`sample diff · step 89 vs step 100 (same` and `text sample 1/5 @ step 89 ([ older, ]` were cut at the
    pane's edge: each heading (latest, an older one, the diff) fits the pane and still says which sample."""
    from rich.cells import cell_len

    app = CockpitApp(watch=str(FIXTURES / "nanogpt-tiny" / "events.jsonl"))
    async with app.run_test(size=size) as pilot:
        run = await watched(pilot, app)
        pane = run.query_one(SamplesPane)
        heading = pane.query_one("#sample-heading")
        samples, n = run.state.samples, len(run.state.samples)
        seen = []
        for keys in ((), ("left_square_bracket",), ("right_square_bracket", "d")):
            await pilot.press(*keys)
            await pilot.pause(0.2)
            text = str(heading.render())
            assert cell_len(text) <= heading.size.width, (size, text, heading.size.width)
            assert shown_lines(heading)[0].rstrip() == text, (size, text)
            seen.append(text)
        latest, older, diff = seen
        assert f"{n}/{n} @ step {samples[-1].step}" in latest
        assert f"{n - 1}/{n} @ step {samples[-2].step}" in older
        a, b = pane.diff
        assert f"step {samples[a].step} vs step {samples[b].step}" in diff
        if size[0] >= 200:                                   # room for the whole of each
            assert diff.endswith("(same prompt; new words highlighted)") and older.endswith("([ older, ] newer)")


@pytest.mark.parametrize("size", [(80, 24), (120, 40), (200, 50)])
async def test_an_image_grid_keeps_its_class_columns_under_their_labels_on_the_run_screen(size):
    """unet's 1x10 digit grid at 80, 120 and 200 columns: one row of 10 columns (not reflowed), each digit
    class named over its column, the whole grid inside the pane."""
    from cockpit.images import UPPER_HALF

    app = CockpitApp(watch=str(FIXTURES / "unet-tiny" / "events.jsonl"))
    async with app.run_test(size=size) as pilot:
        run = await watched(pilot, app)
        ev = run.state.samples[-1]
        body = run.query_one(SamplesPane).query_one("#sample-body")
        lines = [line.rstrip() for line in shown_lines(body) if line.strip()]
        labels, grid = lines[0], [line for line in lines[1:] if line.startswith(UPPER_HALF)]
        assert labels.split() == ev.classes == [str(d) for d in range(10)], lines
        drawn = len(grid[0])
        cell, gap = next((c, g) for g in (1, 0) for c in range(1, 17) if 10 * (c + g) - g == drawn)
        assert len(grid) == -(-cell // 2) and drawn <= body.size.width, (size, lines)
        for j, name in enumerate(ev.classes):                # each label over its own column
            assert labels[j * (cell + gap):j * (cell + gap) + cell].strip() == name, (size, labels)


def watching_a_copy(tmp_path, fixture: str):
    """(a run directory holding a copy of a recorded fixture's log, a cockpit watching it): what `w` writes
    lands beside the copy, never in the fixtures."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "events.jsonl").write_text((FIXTURES / fixture / "events.jsonl").read_text())
    return run_dir, CockpitApp(watch=str(run_dir / "events.jsonl"))


async def test_w_saves_the_sample_shown_to_the_run_directory_and_y_copies_it(tmp_path):
    """w writes the sample on screen beside the run's log and says where; in the sample diff, both sides;
    y puts a text sample on the clipboard."""
    run_dir, app = watching_a_copy(tmp_path, "nanogpt-tiny")
    async with app.run_test(size=SIZE) as pilot:
        run = await watched(pilot, app)
        samples = run.state.samples
        await pilot.press("w")
        await pilot.pause(0.2)
        saved = run_dir / f"sample-{samples[-1].step}.txt"
        assert saved.read_text() == samples[-1].text
        assert any(str(saved) in n.message for n in app._notifications)
        await pilot.press("y")
        await pilot.pause(0.2)
        assert app.clipboard == samples[-1].text
        await pilot.press("left_square_bracket", "left_square_bracket", "y")
        await pilot.pause(0.2)
        assert app.clipboard == samples[-3].text                     # the one shown, not the latest
        await pilot.press("d", "w")                                  # the diff: both sides
        await pilot.pause(0.2)
        a, b = run.query_one(SamplesPane).diff
        for i in (a, b):
            assert (run_dir / f"sample-{samples[i].step}.txt").read_text() == samples[i].text


async def test_w_saves_an_image_sample_as_a_png_with_its_classes_over_the_columns(tmp_path):
    import numpy as np
    from PIL import Image

    from cockpit.images import decode_image, labelled_grid, to_rgb, upscale

    run_dir, app = watching_a_copy(tmp_path, "unet-tiny")
    async with app.run_test(size=SIZE) as pilot:
        run = await watched(pilot, app)
        ev = run.state.samples[-1]
        await pilot.press("w")
        await pilot.pause(0.3)
        with Image.open(run_dir / f"sample-{ev.step}.png") as png:
            saved = np.asarray(png.convert("RGB"))
        img = decode_image(ev.image)
        assert np.array_equal(saved, labelled_grid(img, ev.grid, ev.classes))
        big = to_rgb(upscale(img))
        assert np.array_equal(saved[-big.shape[0]:], big) and saved.shape[0] > big.shape[0]   # a band above
        await pilot.press("y")                                       # not text: nothing copied, and why
        await pilot.pause(0.2)
        assert app.clipboard == ""
        assert any("cannot be copied as text" in n.message for n in app._notifications)


async def test_slash_in_the_emptied_picker_filter_starts_a_filter_instead_of_typing_a_slash():
    """Esc empties the filter and leaves it focused; `/` pressed then, as to filter again, is not typed in: the
    filter that follows matches (it was "/nano", matching nothing)."""
    app = CockpitApp(presets=INFOS)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, PickerScreen), 10, "the picker")
        picker = app.screen
        await pilot.press("slash", *"zzz", "escape", "slash", *"nano")
        await pilot.pause(0.1)
        assert picker.query_text == "nano" and [i["name"] for i in picker.shown] == ["nanogpt"]
