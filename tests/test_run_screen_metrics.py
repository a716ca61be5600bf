"""The run screen's metrics grid, log pane and progress: every metric a run logs is charted, the trainer's
words are shown, and the status line says how far the run is and how long it has left (pauses left out)."""
from __future__ import annotations

import os
import time

import pytest

from cockpit.metrics import fmt_value, run_series
from cockpit.trainer_proc import OutputTail
from cockpit.widgets.braille import braille_rows
from cockpit.widgets.log_pane import LogPane, wrapped_tail
from cockpit.widgets.metric_chart import MetricChart
from cockpit.widgets.metrics_grid import MetricsGrid, grid_shape
from cockpit.widgets.status_line import StatusLine, progress_bar
from common.state import MAX_METRICS, RunState


def run_with(steps=100, max_steps=200, dt=1.0, evals=(), unit_tokens=True) -> RunState:
    s = RunState()
    s.apply({"type": "run_start", "time": 1000.0, "run_id": "r", "preset": "mingpt-sort", "arch": "mingpt",
             "max_steps": max_steps, "unit": "tokens" if unit_tokens else "items"})
    for i in range(1, steps + 1):
        s.apply({"type": "step", "time": 1000.0 + i * dt, "step": i, "loss": 3.0 / i, "lr": 1e-3 * min(1, i / 10),
                 "grad_norm": 1.0 + (i % 7) / 7, "tokens": i * 512, "throughput": 512 / dt, "elapsed": i * dt})
        if i in evals:
            s.apply({"type": "eval", "time": 1000.0 + i * dt, "step": i, "val_loss": 3.1 / i,
                     "metrics": {"accuracy": min(1.0, i / 100), "train_accuracy": min(1.0, i / 90),
                                 "held_out": 180}})
    return s


def line_of(widget) -> str:
    return widget.render().plain


# --- every metric, charted ------------------------------------------------------------------------------

def test_every_metric_the_run_logs_becomes_a_series_the_runs_own_eval_metrics_first():
    s = run_with(evals=(25, 50, 75, 100))
    keys = [x.key for x in run_series(s)]
    assert keys == ["accuracy", "grad_norm", "throughput", "lr", "train_accuracy", "held_out"]
    # (held_out never changed: a flat line says the least and goes last)
    acc = next(x for x in run_series(s) if x.key == "accuracy")
    assert acc.steps == [25, 50, 75, 100] and acc.last() == 1.0
    assert fmt_value(0.975, "accuracy") == "97.5%"
    s.apply({"type": "eval", "time": 2000.0, "step": 101, "val_loss": 0.1, "metrics": {"accuracy": 1.0}})
    s.metrics["accuracy"].values[:] = [1.0] * len(s.metrics["accuracy"].values)   # learnt: 100% at every eval
    assert [x.key for x in run_series(s)][0] == "accuracy"
    assert fmt_value(3e-4, "lr") == "3.00e-04"


def test_eval_metrics_after_a_resume_point_are_dropped_with_the_val_points():
    s = run_with(steps=60, evals=(20, 40, 60))
    s.apply({"type": "run_start", "time": 2000.0, "run_id": "r", "resumed_from": 40, "max_steps": 200})
    assert s.metrics["accuracy"].steps == [20, 40]
    assert len(s.grad_norms) == len(s.train.steps) == len(s.rates) == len(s.paused_at)


def test_a_log_inventing_endless_metric_names_keeps_a_bounded_number_and_counts_the_rest():
    s = run_with(steps=1)
    s.apply({"type": "eval", "time": 1.0, "step": 1, "val_loss": 1.0,
             "metrics": {f"m{i}": float(i) for i in range(MAX_METRICS + 50)}})
    assert len(s.metrics) == MAX_METRICS and s.dropped_metrics == 50


def test_braille_chart_draws_a_falling_line_from_the_top_left_to_the_bottom_right():
    rows = braille_rows(list(range(100)), [100 - i for i in range(100)], width=20, height=4)
    assert len(rows) == 4 and all(len(r) == 20 for r in rows)
    assert rows[0][0] != " " and rows[0][-1] == " "     # starts high on the left
    assert rows[-1][-1] != " " and rows[-1][0] == " "   # ends low on the right
    assert braille_rows([1.0, 2.0], [float("nan"), float("inf")], 5, 2) == [" " * 5] * 2


def test_grid_shape_fits_the_cells_to_the_space():
    assert grid_shape(7, 78, 5) == (3, 1)       # 80x24: one row of three
    assert grid_shape(7, 118, 9) == (4, 1)      # 120x40: one row of four
    assert grid_shape(7, 198, 14) == (7, 1)     # 200x60: all seven in a row
    assert grid_shape(12, 198, 14) == (7, 2)    # ... and a second row when there are more


@pytest.mark.parametrize("size,least", [((80, 24), 3), ((120, 40), 4), ((200, 60), 5)])
async def test_the_run_screen_charts_every_metric_that_fits_and_counts_the_rest(size, least):
    from cockpit.app import CockpitApp
    from tests.test_tui_snapshots import FIXTURES, loaded_run, settle

    app = CockpitApp(watch=str(FIXTURES / "mingpt-sort-tiny" / "events.jsonl"))
    async with app.run_test(size=size) as pilot:
        await settle(pilot, loaded_run(app))
        grid = app.screen.query_one(MetricsGrid)
        shown = [c for c in app.screen.query(MetricChart) if c.display]
        assert len(shown) >= min(least, len(grid.available))
        titles = " ".join(str(c.border_title) for c in shown)
        # the point of mingpt-sort, on screen at every size (its name shortened in a narrow cell, never cut)
        assert ("held-out accuracy 100.0%" if size[0] >= 120 else "held-out acc 100.0%") in titles
        assert "…" not in titles
        assert "grad norm" in titles and "tok/s" in titles
        if size[0] >= 120:
            assert "lr" in titles
        for c in shown:                            # a chart, not an empty box
            assert any(ch != " " and ord(ch) >= 0x2800 for ch in c.render().plain)
        hidden = len(grid.available) - len(shown)
        if hidden:
            assert f"+{hidden} more · g" in str(shown[-1].border_subtitle)


async def test_g_chooses_the_metrics_shown_and_z_enlarges_one():
    from cockpit.app import CockpitApp
    from cockpit.screens.metrics_chooser import MetricsChooser
    from tests.test_tui_snapshots import FIXTURES, loaded_run, settle

    app = CockpitApp(watch=str(FIXTURES / "mingpt-sort-tiny" / "events.jsonl"))
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot, loaded_run(app))
        run = app.screen
        await pilot.press("g")
        await pilot.pause(0.2)
        assert isinstance(app.screen, MetricsChooser)
        await pilot.press("space")                 # untick the first (held-out accuracy)
        await pilot.press("enter")
        await pilot.pause(0.2)
        assert app.screen is run
        shown = [c.key for c in run.query(MetricChart) if c.display]
        assert "accuracy" not in shown and "grad_norm" in shown and "lr" in shown
        await pilot.press("z")
        await pilot.pause(0.2)
        big = run.maximized
        assert isinstance(big, MetricChart) and big.size.height > 20
        await pilot.press("z")
        await pilot.pause(0.2)
        assert run.maximized is None


# --- the log pane ---------------------------------------------------------------------------------------

def test_the_log_pane_shows_log_events_checkpoints_and_the_trainers_printed_output():
    s = run_with(steps=3)
    s.apply({"type": "log", "time": 1.0, "level": "info", "message": "lora: 147,456 trainable of 124,587,264"})
    s.apply({"type": "checkpoint", "time": 2.0, "step": 3, "path": "runs/x/ckpt.pt"})
    s.note_output(["UserWarning: something odd"])
    pane = LogPane()
    pane.update_state(s)
    lines = [text for _, text in wrapped_tail(list(s.logs), 60, 10)]
    assert any("lora: 147,456 trainable" in x for x in lines)
    assert any("checkpoint at step 3: runs/x/ckpt.pt" in x for x in lines)
    assert any("UserWarning" in x for x in lines)
    assert pane.border_subtitle == "3 lines"


def test_wrapped_tail_keeps_the_newest_lines_that_fit():
    entries = [("info", f"message number {i} " + "word " * 12) for i in range(10)]
    lines = wrapped_tail(entries, 30, 4)
    assert len(lines) == 4 and "word" in lines[-1][1]
    assert any("message number 9" in text for _, text in lines)


def test_output_tail_returns_new_complete_lines_and_survives_floods_and_rewrites(tmp_path):
    out = tmp_path / "trainer.out"
    out.write_bytes(b"one\ntw")
    tail = OutputTail(out)
    assert tail.poll() == ["one"]
    with open(out, "ab") as f:
        f.write(b"o\n\x1b[31mred\x1b[0m\n")
    assert tail.poll() == ["two", "␛[31mred␛[0m"]        # control characters shown, never sent to the terminal
    out.write_bytes(b"x" * (OutputTail.MAX_BYTES * 3) + b"\nlast\n")  # rewritten and flooded
    assert tail.poll() == ["last"]
    assert tail.poll() == []
    assert OutputTail(tmp_path / "missing").poll() == []


async def test_before_the_first_step_the_screen_says_what_the_trainer_is_doing(tmp_path):
    from cockpit.app import CockpitApp
    from cockpit.widgets.loss_plot import LossPlot

    log = tmp_path / "events.jsonl"
    log.write_text('{"v":1,"type":"run_start","time":%f,"run_id":"r","preset":"nanogpt","arch":"gpt",'
                   '"max_steps":10}\n{"v":1,"type":"log","time":%f,"message":"data: 1,115,394 tokens (char '
                   'tokenizer, vocab 65)"}\n' % (time.time(), time.time()))
    app = CockpitApp(watch=str(log))
    async with app.run_test(size=(120, 40)) as pilot:
        deadline = time.monotonic() + 20
        while not getattr(app.screen, "loaded", False):
            assert time.monotonic() < deadline
            await pilot.pause(0.05)
        await pilot.pause(0.5)
        plot = app.screen.query_one(LossPlot).render().plain
        assert "waiting for the first step" in plot and "data: 1,115,394 tokens" in plot
        assert "data: 1,115,394 tokens" in app.screen.query_one(LogPane).render().plain


# --- progress --------------------------------------------------------------------------------------------

def test_progress_bar_and_percent_show_how_far_the_run_is():
    s = run_with(steps=50, max_steps=200)
    assert s.progress() == 0.25
    assert progress_bar(0.25, 12) == "━━━" + "─" * 9
    assert progress_bar(0.5 / 12, 12) == "╸" + "─" * 11
    line = StatusLine()
    line.update_state(s)
    assert "25%" in line.render().plain


def test_eta_leaves_paused_time_out():
    s = run_with(steps=100, max_steps=200, dt=1.0)        # 1 s per step: 100 s left
    assert s.eta() == pytest.approx(100.0)
    s.apply({"type": "log", "time": 1100.5, "message": "paused at step 100", "state": "paused", "step": 100})
    s.apply({"type": "log", "time": 1130.5, "message": "resumed at step 100", "state": "running", "step": 100})
    for i in (101, 102):                                   # the trainer's elapsed includes the 30 s pause
        s.apply({"type": "step", "time": 1000.0 + i + 30, "step": i, "loss": 1.0, "tokens": i * 512,
                 "elapsed": i + 30.0})
    assert s.paused_total == pytest.approx(30.0)
    assert s.eta() == pytest.approx(98.0)                  # not (132 s / 102 steps) * 98 = 127 s


def test_the_status_line_shows_the_step_the_trainer_paused_at_not_the_last_logged_one():
    s = run_with(steps=120, max_steps=1000)
    s.apply({"type": "log", "time": 1125.0, "message": "paused at step 129", "state": "paused", "step": 129})
    line = StatusLine()
    line.update_state(s)
    assert "paused" in line.render().plain and "step 129/1000" in line.render().plain


async def test_at_80_columns_the_status_line_keeps_state_step_percent_loss_and_eta():
    from textual.app import App

    s = run_with(steps=100, max_steps=200, evals=(50, 100))
    line = StatusLine()

    class One(App):
        def compose(self):
            yield line

    async with One().run_test(size=(80, 3)) as pilot:
        line.update_state(s)
        await pilot.pause(0.05)
        text = line.render().plain
    assert len(text) <= 80
    for part in ("● running", "step 100/200", "50%", "loss", "ETA 1:40"):
        assert part in text, text


def test_a_resumed_run_without_run_end_counts_its_training_time_not_the_downtime_between():
    s = run_with(steps=10, max_steps=100)                  # 1 s per step, elapsed 1..10
    s.apply({"type": "run_start", "time": 9000.0, "run_id": "r", "resumed_from": 10, "max_steps": 100})
    s.apply({"type": "step", "time": 9001.0, "step": 11, "loss": 1.0, "tokens": 11 * 512, "elapsed": 11.0})
    assert s.wall_time() == pytest.approx(11.0)           # not the 8,000 s the machine was off


# --- screenshot and command palette ----------------------------------------------------------------------

async def test_S_saves_an_svg_screenshot_into_the_run_directory_and_says_where(tmp_path):
    import shutil

    from tests.test_tui_snapshots import FIXTURES, loaded_run, settle

    from cockpit.app import CockpitApp

    run_dir = tmp_path / "run"
    shutil.copytree(FIXTURES / "mingpt-sort-tiny", run_dir)
    app = CockpitApp(watch=str(run_dir / "events.jsonl"))
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot, loaded_run(app))
        await pilot.press("S")
        await pilot.pause(0.3)
        shots = list(run_dir.glob("cockpit-*.svg"))
        assert len(shots) == 1 and "accuracy" in shots[0].read_text()
        assert any(str(shots[0]) in str(n.message) for n in app._notifications)


async def test_ctrl_p_opens_the_command_palette_with_themes_and_the_screenshot():
    from textual.command import CommandPalette

    from tests.test_tui_snapshots import FIXTURES, loaded_run, settle

    from cockpit.app import CockpitApp

    app = CockpitApp(watch=str(FIXTURES / "mingpt-sort-tiny" / "events.jsonl"))
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot, loaded_run(app))
        titles = [c.title for c in app.get_system_commands(app.screen)]
        assert "Theme" in titles and "Screenshot" in titles
        await pilot.press("ctrl+p")
        await pilot.pause(0.3)
        assert isinstance(app.screen, CommandPalette)


async def test_a_tall_samples_pane_shows_the_earlier_samples_of_the_prompt_under_the_latest():
    from textual.widgets import Static

    from tests.test_tui_snapshots import FIXTURES, loaded_run, settle

    from cockpit.app import CockpitApp
    from cockpit.widgets.samples_pane import SamplesPane

    app = CockpitApp(watch=str(FIXTURES / "nanogpt-tiny" / "events.jsonl"))
    async with app.run_test(size=(200, 60)) as pilot:
        await settle(pilot, loaded_run(app))
        pane = app.screen.query_one(SamplesPane)
        body = str(pane.query_one("#sample-body", Static).render())
        steps = [ev.step for ev in pane.samples]
        assert f"· step {steps[-2]} ·" in body and f"· step {steps[-5]} ·" in body   # newest first, four of them
        assert f"· step {steps[-6]} ·" not in body
        await pilot.press("left_square_bracket")        # browsing shows one sample alone
        await pilot.pause(0.2)
        assert "· step" not in str(pane.query_one("#sample-body", Static).render())


async def test_a_metric_that_appears_later_takes_its_place_in_the_grid_and_z_follows_a_live_run(tmp_path):
    """Live: lr, grad norm and throughput come first; the held-out accuracy of the first eval then leads the
    grid (the grid lays charts out in DOM order, so it must be moved there); an enlarged chart keeps showing
    while the run goes on."""
    from tests.test_tui_snapshots import loaded_run, settle

    from cockpit.app import CockpitApp

    s = run_with(steps=20)
    log = tmp_path / "events.jsonl"
    lines = ['{"v":1,"type":"run_start","time":1000.0,"run_id":"r","preset":"mingpt-sort","arch":"mingpt",'
             '"max_steps":200,"pid":%d}' % os.getpid()]
    lines += ['{"v":1,"type":"step","time":%f,"step":%d,"loss":%f,"lr":0.001,"grad_norm":1.5,"tokens":%d,'
              '"throughput":512.0,"elapsed":%f}' % (1000 + i, i, 3.0 / i, 512 * i, float(i)) for i in range(1, 21)]
    log.write_text("\n".join(lines) + "\n")
    app = CockpitApp(watch=str(log))
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot, loaded_run(app))
        grid = app.screen.query_one(MetricsGrid)
        assert grid.shown[:3] == ["grad_norm", "throughput", "lr"]
        with log.open("a") as f:
            f.write('{"v":1,"type":"eval","time":1021.0,"step":20,"val_loss":0.5,"metrics":{"accuracy":0.4}}\n')
        await pilot.pause(1.5)
        order = [c.key for c in grid.children if isinstance(c, MetricChart) and c.display]
        assert order[0] == "accuracy" and grid.shown[0] == "accuracy"
        await pilot.press("z")
        await pilot.pause(0.3)
        big = app.screen.maximized
        ticks = big.render().plain.splitlines()[-1]
        assert "20" in ticks and not any(0x2800 <= ord(ch) <= 0x28FF for ch in ticks), ticks  # a row of step ticks
        with log.open("a") as f:
            f.write('{"v":1,"type":"step","time":1022.0,"step":21,"loss":0.1,"lr":0.001,"grad_norm":1.5,'
                    '"tokens":10752,"throughput":512.0,"elapsed":21.0}\n')
        await pilot.pause(1.5)
        assert app.screen.maximized is big and big.display and big.size.height > 20
        assert any(0x2800 < ord(ch) <= 0x28FF for ch in big.render().plain)
