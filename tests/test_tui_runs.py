"""Pilot tests of the runs browser and the comparison view (issue 10), on fixture runs from real tiny trainers."""
from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cockpit.app import CockpitApp
from common.events import encode_command
from tests.conftest import ROOT, TINY_GPT, events_of

HERE = Path(__file__).parent
SIZE = (120, 40)


@pytest.fixture
def runs_root(tmp_path):
    root = tmp_path / "runs"
    root.mkdir()
    for src in sorted((HERE / "fixtures" / "runs").iterdir()):
        if (src / "events.jsonl").is_file():
            shutil.copytree(src, root / src.name)
    for name in ("nanogpt-tiny", "mingpt-tiny"):
        shutil.copytree(HERE / "fixtures" / "tui" / name, root / name)
    return root


async def wait_for(pilot, cond, timeout=20.0, what="condition"):
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await pilot.pause(0.05)


async def browser(pilot, app):
    await wait_for(pilot, lambda: type(app.screen).__name__ == "RunsScreen" and app.screen.loaded, what="the index")
    return app.screen


async def highlight(pilot, screen, name):
    row = [r.name for r in screen.shown].index(name)
    screen.query_one("#runs-table").move_cursor(row=row)
    await pilot.pause(0.05)


async def test_r_in_the_picker_opens_the_browser_with_every_run_and_its_status(runs_root):
    app = CockpitApp(presets=[{"name": "nanogpt", "arch": "gpt", "task": "lm"}], runs_dir=str(runs_root))
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause(0.2)
        await pilot.press("r")
        screen = await browser(pilot, app)
        status = {r.name: r.status for r in screen.shown}
        assert status == {"nanogpt-completed": "completed", "mingpt-stopped": "stopped",
                          "nanogpt-killed": "killed", "nanogpt-tiny": "completed", "mingpt-tiny": "completed"}
        table = screen.query_one("#runs-table")
        assert table.row_count == 5
        await pilot.press("escape")
        await wait_for(pilot, lambda: type(app.screen).__name__ == "PickerScreen", what="the picker")


async def test_sort_by_any_column_and_filter_with_slash(runs_root):
    app = CockpitApp(start="runs", runs_dir=str(runs_root))
    async with app.run_test(size=SIZE) as pilot:
        screen = await browser(pilot, app)
        order = [k for k, _ in screen.columns]
        presses = order.index("best_val") - order.index("started")
        await pilot.press(*["s"] * (presses % len(order)))
        assert screen.sort_key == "best_val" and not screen.reverse
        vals = [r.best_val for r in screen.shown]
        assert vals == sorted(vals)
        await pilot.press("S")
        assert [r.best_val for r in screen.shown] == sorted(vals, reverse=True)
        await pilot.press("slash", *"status:killed", "enter")
        assert [r.name for r in screen.shown] == ["nanogpt-killed"]
        assert "1 of 5 runs" in str(screen.query_one("#runs-title").render())
        screen.query_one("#runs-filter").value = "best_val<3"
        await pilot.pause(0.1)
        assert {r.name for r in screen.shown} == {"nanogpt-tiny", "mingpt-tiny"}


async def test_enter_opens_a_finished_run_in_the_run_screen(runs_root):
    app = CockpitApp(start="runs", runs_dir=str(runs_root))
    async with app.run_test(size=SIZE) as pilot:
        screen = await browser(pilot, app)
        await highlight(pilot, screen, "nanogpt-killed")
        await pilot.press("enter")
        await wait_for(pilot, lambda: type(app.screen).__name__ == "RunScreen" and app.screen.loaded, what="replay")
        await pilot.pause(0.3)
        run = app.screen
        assert run.state.status == "killed" and run.state.step == 16      # no run_end, trainer pid gone
        assert run.query_one("#error").has_class("-shown")
        await pilot.press("escape")
        await wait_for(pilot, lambda: app.screen is screen, what="back to the browser")


async def test_mark_two_runs_compare_them_and_toggle_the_x_axis(runs_root):
    app = CockpitApp(start="runs", runs_dir=str(runs_root))
    async with app.run_test(size=SIZE) as pilot:
        screen = await browser(pilot, app)
        await pilot.press("c")                                   # nothing marked: refused with a hint
        assert type(app.screen).__name__ == "RunsScreen"
        for name in ("nanogpt-tiny", "mingpt-tiny"):
            await highlight(pilot, screen, name)
            await pilot.press("space")
        assert len(screen.marked) == 2
        assert "2 marked" in str(screen.query_one("#runs-title").render())
        await pilot.press("c")
        await wait_for(pilot, lambda: type(app.screen).__name__ == "CompareScreen" and app.screen.loaded,
                       what="the comparison")
        await pilot.pause(0.3)
        cmp = app.screen
        plot = cmp.query_one("#compare-plot")
        labels = sorted(k for k in plot.drawn)
        assert len(labels) == 4 and sum(k.endswith(" train") for k in labels) == 2
        assert any(k.startswith("nanogpt ") for k in labels) and any(k.startswith("mingpt ") for k in labels)
        assert plot.x_axis == "step"
        await pilot.press("t")
        await pilot.pause(0.2)
        assert plot.x_axis == "tokens"
        for label, s in zip(cmp.labels, cmp.states):
            xs, _ = plot.drawn[f"{label} train"]
            assert xs.max() == s.train.units[-1]
        await pilot.press("e")
        assert plot.smoothing == 0.6                              # the same smoothing for every run
        table = cmp.query_one("#compare-table")
        rows = {str(table.get_row_at(i)[0]): [str(c) for c in table.get_row_at(i)[1:]] for i in range(table.row_count)}
        assert rows["arch"] == ["gpt", "mingpt"] or rows["arch"] == ["mingpt", "gpt"]
        assert "train.lr" in rows and "best val loss" in rows and "peak memory" in rows
        assert "train.max_steps" not in rows                      # equal in both: not a difference
        await pilot.press("escape")
        await wait_for(pilot, lambda: app.screen is screen, what="back to the browser")


async def test_delete_asks_first_and_removes_only_that_run(runs_root):
    app = CockpitApp(start="runs", runs_dir=str(runs_root))
    async with app.run_test(size=SIZE) as pilot:
        screen = await browser(pilot, app)
        await highlight(pilot, screen, "mingpt-stopped")
        await pilot.press("d")
        await pilot.pause(0.1)
        assert type(app.screen).__name__ == "ConfirmScreen"
        await pilot.press("n")
        await pilot.pause(0.1)
        assert (runs_root / "mingpt-stopped").is_dir()
        await pilot.press("d")
        await pilot.pause(0.1)
        await pilot.press("y")
        await pilot.pause(0.2)
        assert not (runs_root / "mingpt-stopped").exists()
        assert "mingpt-stopped" not in [r.name for r in screen.shown]
        assert len(list(runs_root.iterdir())) == 4


async def test_the_browser_title_counts_one_run_as_one_run(tmp_path):
    root = tmp_path / "runs"
    shutil.copytree(HERE / "fixtures" / "tui" / "nanogpt-tiny", root / "nanogpt-tiny")
    app = CockpitApp(start="runs", runs_dir=str(root))
    async with app.run_test(size=SIZE) as pilot:
        screen = await browser(pilot, app)
        title = str(screen.query_one("#runs-title").render())
        assert "·  1 run  ·" in title, title


async def test_esc_after_a_filter_clears_it_and_reopening_the_browser_keeps_sort_and_marks(runs_root):
    app = CockpitApp(presets=[{"name": "nanogpt", "arch": "gpt", "task": "lm"}], runs_dir=str(runs_root))
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause(0.2)
        await pilot.press("r")
        screen = await browser(pilot, app)
        await pilot.press("slash", *"status:killed", "enter")
        assert [r.name for r in screen.shown] == ["nanogpt-killed"]
        await pilot.press("escape")                              # the filter goes, the browser stays
        await pilot.pause(0.1)
        assert app.screen is screen and len(screen.shown) == 5
        await pilot.press("s", "S")
        sort = (screen.sort_key, screen.reverse)
        await highlight(pilot, screen, "mingpt-tiny")
        await pilot.press("space")
        await pilot.press("escape")                              # back to the picker
        await wait_for(pilot, lambda: type(app.screen).__name__ == "PickerScreen", what="the picker")
        await pilot.press("r")
        again = await browser(pilot, app)
        assert again is not screen
        assert (again.sort_key, again.reverse) == sort and again.marked == {str(runs_root / "mingpt-tiny")}
        assert "1 marked" in str(again.query_one("#runs-title").render())


async def test_esc_while_typing_a_filter_clears_it_and_stays_in_the_browser(runs_root):
    app = CockpitApp(start="runs", runs_dir=str(runs_root))
    async with app.run_test(size=SIZE) as pilot:
        screen = await browser(pilot, app)
        await pilot.press("slash", *"killed")
        assert [r.name for r in screen.shown] == ["nanogpt-killed"]
        await pilot.press("escape")
        await pilot.pause(0.1)
        assert app.screen is screen and len(screen.shown) == 5 and screen.query_one("#runs-table").has_focus
        await pilot.press("escape")
        await wait_for(pilot, lambda: type(app.screen).__name__ == "PickerScreen", what="the picker")


def table_lines(screen) -> list[str]:
    table = screen.query_one("#runs-table")
    return [table.render_line(y).text for y in range(table.size.height)]


async def test_run_ids_show_in_full_at_120_columns_the_other_columns_shrink_first(runs_root):
    """The run id is what `--resume` and the detail pane name: at 120 columns it is never cut, even a long
    preset's; the preset (the run id's first word) and the start time (in the run id too) give way first."""
    src = runs_root / "nanogpt-killed" / "events.jsonl"
    long_id = "mingpt-sort-20261121-054810-795f"
    shutil.copytree(runs_root / "nanogpt-killed", runs_root / "long")
    (runs_root / "long" / "events.jsonl").write_text(src.read_text().replace("nanogpt-20261121-054810-795f", long_id))
    app = CockpitApp(start="runs", runs_dir=str(runs_root), presets=[])
    async with app.run_test(size=SIZE) as pilot:
        screen = await browser(pilot, app)
        lines = table_lines(screen)
        assert len(screen.shown) == 6 and long_id in {r.run_id for r in screen.shown}
        for r in screen.shown:
            assert sum(r.run_id in line for line in lines) == 1, (r.run_id, lines)
        assert all(len(line.rstrip()) <= SIZE[0] for line in lines)
        assert "status" in lines[0] and "best val" in lines[0] and any("killed" in line for line in lines)


@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory) -> Path:
    """A real tiny nanogpt run that `stop` (on its stdin) ended before it finished: run_end stopped, with a
    checkpoint of the step it stopped at."""
    run = tmp_path_factory.mktemp("stopped") / "nanogpt-stopped"
    log = run / "events.jsonl"
    r = subprocess.run([sys.executable, "-m", "trainers", "nanogpt", *TINY_GPT, "train.max_steps=6",
                        "train.log_interval=1", "--log", str(log), "--commands"], input=encode_command("stop"),
                       cwd=ROOT, capture_output=True, timeout=300, check=False)
    assert r.returncode == 0, r.stderr
    assert events_of(log, "run_end")[-1]["status"] == "stopped" and (run / "ckpt.pt").is_file()
    return run


def notes(screen) -> list[str]:
    """What `screen` tells the user in notifications, from now on."""
    seen = []
    screen.notify = lambda message, **_kw: seen.append(str(message))
    return seen


def finish(app):
    for s in app.screen_stack:
        source = getattr(s, "source", None)
        if getattr(source, "launched", False) and source.returncode() is None:
            source.kill()
            source.proc.wait(timeout=30)


async def test_r_resumes_a_stopped_run_from_its_checkpoint_in_the_run_screen(runs_root, stopped_run):
    run = runs_root / stopped_run.name
    shutil.copytree(stopped_run, run)
    stopped_at = events_of(run / "events.jsonl", "run_end")[-1]["step"]
    app = CockpitApp(start="runs", runs_dir=str(runs_root))
    try:
        async with app.run_test(size=SIZE) as pilot:
            screen = await browser(pilot, app)
            said = notes(screen)
            for name, why in (("nanogpt-tiny", "only a stopped, killed or failed run resumes"),
                              ("mingpt-stopped", "has no checkpoint")):
                await highlight(pilot, screen, name)
                await pilot.press("r")
                assert app.screen is screen and why in said[-1], said
            await highlight(pilot, screen, run.name)
            await pilot.press("r")
            await wait_for(pilot, lambda: type(app.screen).__name__ == "RunScreen", what="the run screen")
            resumed = app.screen
            assert resumed.source.launched and resumed.source.path == run / "events.jsonl"
            await wait_for(pilot, lambda: resumed.finished, 180, "the resumed run to end")
            assert resumed.state.status == "completed" and resumed.state.step == 6
            assert resumed.state.resumes == [stopped_at]
            starts = events_of(run / "events.jsonl", "run_start")
            assert [s["resumed_from"] for s in starts] == [None, stopped_at]
            await pilot.press("escape")
            await wait_for(pilot, lambda: app.screen is screen, what="back to the browser")
            await wait_for(pilot, lambda: {r.name: r.status for r in screen.runs}[run.name] == "completed",
                           what="the browser to see the run completed")
    finally:
        finish(app)


async def test_l_relaunches_a_run_as_a_new_run_with_its_preset_and_config(runs_root, stopped_run):
    run = runs_root / stopped_run.name
    shutil.copytree(stopped_run, run)
    before = set(runs_root.iterdir())
    app = CockpitApp(start="runs", runs_dir=str(runs_root))
    try:
        async with app.run_test(size=SIZE) as pilot:
            screen = await browser(pilot, app)
            await highlight(pilot, screen, run.name)
            await pilot.press("l")
            await wait_for(pilot, lambda: type(app.screen).__name__ == "RunScreen", what="the run screen")
            new = app.screen
            await wait_for(pilot, lambda: new.finished, 180, "the new run to end")
            assert new.state.status == "completed" and new.state.step == 6 and not new.state.resumes
        (made,) = set(runs_root.iterdir()) - before
        original = events_of(run / "events.jsonl", "run_start")[0]
        again = events_of(made / "events.jsonl", "run_start")[0]
        assert again["run_id"] != original["run_id"] and again["preset"] == original["preset"]
        assert again["config"] == original["config"]
    finally:
        finish(app)
