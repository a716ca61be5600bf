"""SVG snapshots of the cockpit TUI (pytest-textual-snapshot), made deterministic: recorded fixture logs from
real tiny runs (tests/fixtures/tui), fixed preset facts, no clocks, no live system data.

Update after an intended change: pytest tests/test_tui_snapshots.py --snapshot-update (then look at them)."""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from cockpit.app import CockpitApp

HERE = Path(__file__).parent
FIXTURES = HERE / "fixtures" / "tui"
RUN_FIXTURES = HERE / "fixtures" / "runs"
TB_FIXTURE = HERE / "fixtures" / "tensorboard" / "hf-trainer"
TB_WRITTEN = 1_700_000_300     # the fixture's files' modification time: long before any test runs

# Fixed preset facts (no measurement subprocess): one preset does not fit the 12 GB budget (red).
PRESETS = [
    {"name": "dit", "arch": "dit", "task": "diffusion", "n_params": 32_470_000, "est_vram_bytes": int(16.4 * 2**30),
     "vram_budget_gb": 12.0, "profile_here": "cpu",
     "description": "DiT, the Diffusion Transformer: patches of a noisy image go through a plain transformer "
                    "conditioned on the timestep and class by adaLN-Zero."},
    {"name": "mingpt-sort", "arch": "mingpt", "task": "sort", "n_params": 85_730, "est_vram_bytes": 14_900_000,
     "vram_budget_gb": 12.0, "profile_here": "cpu",
     "description": "minGPT's gpt-nano learning to sort six digits: watch exact-match accuracy jump once "
                    "attention learns to count."},
    {"name": "nanogpt", "arch": "gpt", "task": "lm", "n_params": 10_750_000, "est_vram_bytes": int(4.5 * 2**30),
     "vram_budget_gb": 12.0, "profile_here": "cpu",
     "description": "nanoGPT's character-level Shakespeare GPT: a decoder-only transformer with causal "
                    "self-attention, learned positions and weight tying. Watch the loss fall from ln(vocab) ~ 4.2 "
                    "through the \"spaces and vowels\" plateau (~2.5) to words and speaker names (~1.5)."},
    {"name": "unet", "arch": "unet", "task": "diffusion", "n_params": 38_310_000, "est_vram_bytes": int(6.3 * 2**30),
     "vram_budget_gb": 12.0, "profile_here": "cpu",
     "description": "A small class-conditional U-Net DDPM: samples start as pure noise and are denoised by DDIM."},
]


async def settle(pilot, cond, timeout=20.0):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "the screen did not load"
        await pilot.pause(0.05)
    await pilot.pause(0.3)


async def open_internals(pilot, app):
    """The run screen loaded, then `i`: its internals view."""
    await settle(pilot, loaded_run(app))
    await pilot.press("i")
    await settle(pilot, lambda: type(app.screen).__name__ == "InternalsScreen")


def loaded_run(app):
    return lambda: getattr(app.screen, "loaded", False) and type(app.screen).__name__ == "RunScreen"


@pytest.mark.parametrize("size", [(80, 24), (120, 40)])
def test_picker_snapshot(snap_compare, size):
    async def before(pilot):
        await pilot.pause(0.2)
        await pilot.press("down", "down")        # nanogpt highlighted: its description shows
    assert snap_compare(CockpitApp(presets=PRESETS), terminal_size=size, run_before=before)


SIZES = [(80, 24), (120, 40), (200, 60)]


def snap_recorded_run(snap_compare, fixture: str, size) -> bool:
    """The run screen of a recorded fixture run, once loaded, against its snapshot."""
    app = CockpitApp(watch=str(FIXTURES / fixture / "events.jsonl"))

    async def before(pilot):
        await settle(pilot, loaded_run(app))
    return snap_compare(app, terminal_size=size, run_before=before)


@pytest.mark.parametrize("size", SIZES)
def test_run_screen_snapshot_from_a_recorded_run(snap_compare, size):
    assert snap_recorded_run(snap_compare, "nanogpt-tiny", size)


@pytest.mark.parametrize("size", SIZES)
def test_run_screen_snapshot_of_mingpt_sort_with_its_accuracy_charted(snap_compare, size):
    assert snap_recorded_run(snap_compare, "mingpt-sort-tiny", size)


@pytest.mark.parametrize("size", SIZES)
def test_run_screen_snapshot_of_a_diffusion_run_with_its_class_grid(snap_compare, size):
    assert snap_recorded_run(snap_compare, "dit-tiny", size)


@pytest.mark.parametrize("size", [(80, 24), (120, 40)])
def test_run_screen_snapshot_of_a_text_to_image_run_with_a_column_per_prompt(snap_compare, size):
    """pixart: the fixed prompts "the digit zero" .. "the digit nine", their common words said once."""
    assert snap_recorded_run(snap_compare, "pixart-tiny", size)


def test_samples_pane_snapshot_of_a_grid_drawn_from_a_typed_prompt(snap_compare):
    """The grid of "a thin 7" (typed with `s`), browsed back to with `[`: the prompt over its images."""
    app = CockpitApp(watch=str(FIXTURES / "pixart-tiny" / "events.jsonl"))

    async def before(pilot):
        await settle(pilot, loaded_run(app))
        await pilot.press("left_square_bracket", "left_square_bracket")
        await pilot.pause(0.3)
    assert snap_compare(app, terminal_size=(120, 40), run_before=before)


def test_run_screen_snapshot_of_a_failed_run_with_its_traceback(snap_compare):
    app = CockpitApp(watch=str(FIXTURES / "nanogpt-failed" / "events.jsonl"))

    async def before(pilot):
        await settle(pilot, loaded_run(app))
    assert snap_compare(app, terminal_size=(120, 40), run_before=before)


def test_samples_pane_snapshot_of_an_image_grid(snap_compare):
    app = CockpitApp(watch=str(FIXTURES / "unet-tiny" / "events.jsonl"))

    async def before(pilot):
        await settle(pilot, loaded_run(app))
    assert snap_compare(app, terminal_size=(120, 40), run_before=before)


def test_sample_diff_snapshot(snap_compare):
    app = CockpitApp(watch=str(FIXTURES / "nanogpt-tiny" / "events.jsonl"))

    async def before(pilot):
        await settle(pilot, loaded_run(app))
        await pilot.press("d", "e", "m")         # sample diff, EMA 0.6, markers off
        await pilot.pause(0.3)
    assert snap_compare(app, terminal_size=(120, 40), run_before=before)


def test_run_screen_snapshot_of_a_tensorboard_run(snap_compare, tmp_path):
    """A Hugging Face Trainer-style TensorBoard run (tests/fixtures/tensorboard/make_fixture.py): its loss and
    eval loss charted, lr, grad norm, eval accuracy and the other scalars in the metrics grid, its text sample
    shown; its file written long ago (its writer gone), so the run reads as completed."""
    run = tmp_path / TB_FIXTURE.name
    shutil.copytree(TB_FIXTURE, run)
    for f in run.iterdir():
        os.utime(f, (TB_WRITTEN, TB_WRITTEN))
    app = CockpitApp(watch=str(run))

    async def before(pilot):
        await settle(pilot, loaded_run(app))
    assert snap_compare(app, terminal_size=(120, 40), run_before=before)


def test_internals_view_snapshot_of_mingpt_sort_attention(snap_compare):
    """`i`: the attention maps of minGPT sorting digits (three layers of three heads over the held-out list and
    its sorted answer), the probe at step 600 of 10."""
    app = CockpitApp(watch=str(FIXTURES / "mingpt-sort-internals" / "events.jsonl"))

    async def before(pilot):
        await open_internals(pilot, app)
    assert snap_compare(app, terminal_size=(120, 48), run_before=before)


def test_internals_view_snapshot_of_mamba_selectivity_one_probe_back(snap_compare):
    """A recurrent model: Mamba's Δ over the probe text, one probe older than the newest (`[`)."""
    app = CockpitApp(watch=str(FIXTURES / "mamba-internals" / "events.jsonl"))

    async def before(pilot):
        await open_internals(pilot, app)
        await pilot.press("left_square_bracket")
        await pilot.pause(0.3)
    assert snap_compare(app, terminal_size=(120, 40), run_before=before)


def test_internals_view_snapshot_of_dit_loss_by_timestep(snap_compare):
    """A diffusion model: DiT's loss on fixed images, noise and classes by timestep bucket."""
    app = CockpitApp(watch=str(FIXTURES / "dit-internals" / "events.jsonl"))

    async def before(pilot):
        await open_internals(pilot, app)
    assert snap_compare(app, terminal_size=(100, 30), run_before=before)


@pytest.fixture
def runs_here(tmp_path, monkeypatch):
    """A `runs/` directory of fixture runs in the current directory, shown as `runs/` (no tmp path in the
    picture); dates in UTC."""
    root = tmp_path / "runs"
    root.mkdir()
    for src in sorted(RUN_FIXTURES.iterdir()):
        if (src / "events.jsonl").is_file():
            shutil.copytree(src, root / src.name)
    for name in ("nanogpt-tiny", "mingpt-tiny", "unet-tiny"):
        shutil.copytree(FIXTURES / name, root / name)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield "runs"
    monkeypatch.delenv("TZ")
    time.tzset()


def test_runs_browser_snapshot(snap_compare, runs_here):
    app = CockpitApp(start="runs", runs_dir=runs_here)

    async def before(pilot):
        await settle(pilot, lambda: getattr(app.screen, "loaded", False))
        await pilot.press("space")               # mark the newest run
    assert snap_compare(app, terminal_size=(120, 40), run_before=before)


def test_two_run_comparison_snapshot(snap_compare, runs_here):
    app = CockpitApp(start="runs", runs_dir=runs_here)

    async def before(pilot):
        await settle(pilot, lambda: getattr(app.screen, "loaded", False))
        screen = app.screen
        for name in ("nanogpt-tiny", "mingpt-tiny"):
            row = [r.name for r in screen.shown].index(name)
            screen.query_one("#runs-table").move_cursor(row=row)
            await pilot.press("space")
        await pilot.press("c")
        await settle(pilot, lambda: getattr(app.screen, "loaded", False) and type(app.screen).__name__ == "CompareScreen")
    assert snap_compare(app, terminal_size=(120, 40), run_before=before)


@pytest.mark.parametrize("size", [(80, 24), (120, 40), (200, 60)])
def test_three_run_comparison_snapshot(snap_compare, runs_here, size):
    """The legend sits outside the chart with every run's label in full, and the differences table fits
    the screen with a column per run."""
    from cockpit.widgets.loss_plot import LossPlot

    app = CockpitApp(start="runs", runs_dir=runs_here)
    labels = ["nanogpt 20261121-054927-5a93", "mingpt 20261121-055049-3684", "nanogpt 20261121-054734-15ad"]

    async def before(pilot):
        await settle(pilot, lambda: getattr(app.screen, "loaded", False))
        screen = app.screen
        for name in ("nanogpt-tiny", "mingpt-tiny", "nanogpt-completed"):
            row = [r.name for r in screen.shown].index(name)
            screen.query_one("#runs-table").move_cursor(row=row)
            await pilot.press("space")
        await pilot.press("c")
        await settle(pilot, lambda: getattr(app.screen, "loaded", False) and type(app.screen).__name__ == "CompareScreen")
        legend = str(app.screen.query_one("#compare-legend").render())
        assert all(label in legend for label in labels), legend
        chart = app.screen.query_one(LossPlot).render().plain
        assert "nanogpt" not in chart and "train" not in chart, chart       # no legend over the curves
        table = app.screen.query_one("#compare-table")
        assert len(table.columns) == 4
        assert table.virtual_size.width <= table.scrollable_content_region.width   # no run's column cut off
    assert snap_compare(app, terminal_size=size, run_before=before)
