"""Pilot tests of the runs browser and the comparison view (issue 10), on fixture runs from real tiny trainers."""
from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from cockpit.app import CockpitApp

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
