"""The panes' drawing from a RunState: what a user reads in each pane (rendered without a terminal)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from cockpit.widgets.gpu_pane import GpuPane
from cockpit.widgets.kernel_chart import KernelChart
from cockpit.widgets.loss_plot import LossPlot
from cockpit.widgets.memory_pane import MemoryPane
from common.state import RunState

ROOT = Path(__file__).resolve().parents[1]


def started() -> RunState:
    s = RunState()
    s.apply({"type": "run_start", "time": 0.0, "run_id": "r", "preset": "nanogpt", "arch": "gpt",
             "config": {"vram_budget_gb": 12.0}, "max_steps": 100})
    return s


def plain(widget) -> str:
    return widget.render().plain


async def mounted_render(widget, size=(60, 14)):
    """Mount `widget` alone in an app of `size` and return what it renders (a rich Text)."""
    from textual.app import App

    class One(App):
        def compose(self):
            yield widget

    async with One().run_test(size=size) as pilot:
        await pilot.pause(0.05)
        return widget.render()


def test_gpu_pane_shows_temperature_utilisation_vram_gauge_power_and_throttle():
    s = started()
    for i, used in enumerate((2, 6, 11)):
        s.apply({"type": "system", "time": float(i), "gpus": [
            {"index": 0, "name": "NVIDIA GeForce RTX 3060", "temp_c": 70 + i, "util_pct": 97, "mem_used": used * 2**30,
             "mem_total": 12 * 2**30, "power_w": 165.0, "throttle": ["sw_thermal"] if i == 2 else []}],
            "cpu": {"util_pct": 50.0, "rss": 2**30}})
    pane = GpuPane()
    pane.update_state(s)
    text = plain(pane)
    assert "GPU 0 NVIDIA GeForce RTX 3060" in text
    assert "72°C" in text and "util 97%" in text and "power 165 W" in text
    assert "11.0 GiB/12.0 GiB" in text and "█" in text
    assert "throttle sw_thermal" in text
    assert "no NVIDIA GPU" not in text


def test_gpu_pane_without_nvidia_says_so_with_the_nvml_reason_and_shows_cpu_and_ram():
    s = started()
    s.apply({"type": "system", "time": 1.0, "nvml": "NVMLError_LibraryNotFound: NVML Shared Library Not Found",
             "cpu": {"util_pct": 75.0, "rss": 400 * 2**20, "ram_used": 3 * 2**30, "ram_total": 24 * 2**30, "cores": 2}})
    pane = GpuPane()
    pane.update_state(s)
    text = plain(pane)
    assert "no NVIDIA GPU" in text and "NVMLError_LibraryNotFound" in text
    assert "CPU  75% of 2 cores" in text and "3.0 GiB/24.0 GiB" in text and "trainer RSS 400.0 MiB" in text


async def test_memory_pane_turns_red_when_the_peak_exceeds_the_vram_budget():
    s = started()
    layers = [{"name": f"transformer.h.{i}", "activation_bytes": (i + 1) * 2**28, "param_bytes": 2**20}
              for i in range(3)]
    s.apply({"type": "memory", "time": 1.0, "step": 0, "layers": layers, "budget_bytes": 12 * 2**30,
             "totals": {"params": 2**30, "grads": 2**30, "optimizer": 2**31, "activations": 6 * 2**28,
                        "peak_allocated": 14 * 2**30}})
    pane = MemoryPane()
    pane.update_state(s)
    r = await mounted_render(pane)
    text = r.plain
    assert "14.0 GiB of 12.0 GiB (peak allocated)" in text
    assert "transformer.h.2" in text and "768.0 MiB" in text
    over = [span for span in r.spans if "red" in str(span.style)]
    assert over, "an over-budget peak must be drawn in red"


async def test_a_narrow_memory_and_system_pane_wrap_their_notes_instead_of_cutting_them_off():
    # 58 columns: what a 120-column terminal gives each bottom pane
    s = started()
    s.apply({"type": "memory", "time": 1.0, "step": 0, "budget_bytes": 12 * 2**30,
             "layers": [{"name": "h.0", "activation_bytes": 2**24, "param_bytes": 2**20}],
             "totals": {"params": 3 * 2**20, "grads": 3 * 2**20, "optimizer": 6 * 2**20, "activations": 67 * 2**20}})
    reason = "NVMLError_LibraryNotFound: NVML Shared Library Not Found"
    s.apply({"type": "system", "time": 1.0, "nvml": reason, "cpu": {"util_pct": 90.0, "cores": 2}})
    memory = MemoryPane()
    memory.update_state(s)
    text = (await mounted_render(memory, size=(58, 14))).plain
    assert "(sum of the parts; no allocator on CPU)" in text and "acts 67.0 MiB" in text
    assert all(len(line) <= 58 for line in text.splitlines()) and "…" not in text
    gpu = GpuPane()
    gpu.update_state(s)
    text = (await mounted_render(gpu, size=(58, 14))).plain
    assert " ".join(text.split()).count(reason) == 1               # all of it, over two lines
    assert all(len(line) <= 58 for line in text.splitlines())


def marked_run(evals: bool = False) -> RunState:
    """A run with a skipped step, GPU throttling, a checkpoint and a resume (and evals, when asked)."""
    s = started()
    for i in range(1, 41):
        s.apply({"type": "step", "time": float(i), "step": i, "loss": 4.0 - i * 0.05, "lr": 1e-3, "tokens": i * 64,
                 "elapsed": float(i)})
        if evals and i % 10 == 0:
            s.apply({"type": "eval", "time": float(i), "step": i, "val_loss": 4.1 - i * 0.05})
        if i == 10:
            s.apply({"type": "log", "time": float(i), "level": "warning", "message": "non-finite", "step": i,
                     "skipped": 1})
        if i == 20:
            s.apply({"type": "checkpoint", "time": float(i), "step": 20, "path": "/x/ckpt.pt"})
            s.apply({"type": "system", "time": float(i), "gpus": [{"index": 0, "throttle": ["hw_slowdown"]}]})
    s.apply({"type": "run_start", "time": 50.0, "run_id": "r", "config": {}, "resumed_from": 30})
    for i in range(31, 36):
        s.apply({"type": "step", "time": 50.0 + i, "step": i, "loss": 2.0, "lr": 1e-3, "tokens": i * 64,
                 "elapsed": float(i)})
    return s


def test_loss_plot_marks_skipped_steps_throttling_checkpoints_and_resumes():
    s = marked_run()
    plot = LossPlot()
    plot.set_runs([("nanogpt", s)])
    assert plot.draw(80)
    assert plot.drawn["marker:skipped"][0].tolist() == [10]
    assert plot.drawn["marker:throttle"][0].tolist() == [20]
    assert plot.drawn["marker:checkpoint"][0].tolist() == [20]
    assert plot.drawn["marker:resume"][0].tolist() == [30]
    assert plot.drawn["train"][0].max() == 35                  # the resumed run replaced steps 31..40
    sub = plot.subtitle()
    for legend in ("S skipped step", "T GPU throttle", "C checkpoint", "R resume"):
        assert legend in sub
    plot.configure(show_markers=False)
    plot.draw(80)
    assert not [k for k in plot.drawn if k.startswith("marker:")] and "markers off" in plot.subtitle()


async def test_markers_at_the_same_step_are_each_drawn_with_a_free_column_between_them():
    """A resume where the lr schedule changes phase, a throttle beside a checkpoint: every letter is on the rug,
    none hides another, and no two touch (side by side `L` and `R` would read as one word `LR`)."""
    import re

    s = started()
    for i in range(1, 41):  # warm-up to step 30, then flat: an lr phase change at step 30
        s.apply({"type": "step", "time": float(i), "step": i, "loss": 4.0 - i * 0.05, "lr": 1e-3 * min(i, 30) / 30,
                 "tokens": i * 64, "elapsed": float(i)})
        if i == 20:
            s.apply({"type": "checkpoint", "time": float(i), "step": 20, "path": "/x/ckpt.pt"})
            s.apply({"type": "system", "time": float(i), "gpus": [{"index": 0, "throttle": ["hw_slowdown"]}]})
    s.apply({"type": "run_start", "time": 50.0, "run_id": "r", "config": {}, "resumed_from": 30})
    for i in range(31, 61):
        s.apply({"type": "step", "time": 50.0 + i, "step": i, "loss": 2.0, "lr": 1e-3, "tokens": i * 64,
                 "elapsed": 50.0 + i})
    plot = LossPlot()
    plot.set_runs([("nanogpt", s)])
    for width in (60, 100, 160):
        text = (await mounted_render(plot, size=(width, 16))).plain
        canvas = [line[line.index("┤") + 1:] if "┤" in line else line for line in text.splitlines()]
        rug = next(line for line in reversed(canvas) if "R" in line)
        letters = {m.group(): m.start() for m in re.finditer("[CELSTR]", rug)}
        assert set(letters) == {"T", "C", "R", "L"}, rug
        assert not any(re.search("[CELSTR]{2}", line) for line in canvas), text
        assert letters["T"] < letters["C"] < letters["R"] < letters["L"]  # the shifted letter follows its step
    assert plot.drawn["marker:lr"][0].tolist() == plot.drawn["marker:resume"][0].tolist() == [30]


async def test_at_80_columns_the_chart_subtitle_keeps_the_view_settings_whole():
    from textual.app import App
    from textual.geometry import Region

    plot = LossPlot()
    plot.styles.border = ("round", "white")
    plot.update_state(marked_run(evals=True))
    plot.configure(smoothing=0.95, x_axis="time", log_y=True)

    class One(App):
        def compose(self):
            yield plot

    app = One()
    async with app.run_test(size=(80, 16)) as pilot:
        await pilot.pause(0.05)
        bottom = plot.render_lines(Region(0, 0, 80, 16))[-1].text
    assert " ━ train EMA 0.95 ━ val · C E S T R · x: seconds · log-y ─╯" in bottom, bottom   # no `x: secon…`


def curve_cells(text) -> dict[tuple[int, int], str]:
    """(row, column) -> colour name of every braille cell of a rendered chart: where its curves are."""
    starts, pos = [], 0
    for line in text.plain.split("\n"):
        starts.append(pos)
        pos += len(line) + 1
    cells = {}
    for span in text.spans:
        color = getattr(span.style, "color", None)
        for i in range(span.start, span.end):
            if color is not None and "\u2800" <= text.plain[i] <= "\u28ff":
                row = max(r for r, start in enumerate(starts) if start <= i)
                cells[row, i - starts[row]] = color.name
    return cells


async def test_where_train_and_val_pass_through_the_same_cells_the_chart_shows_train():
    alone, both = started(), started()
    for i in range(1, 41):
        for s in (alone, both):
            s.apply({"type": "step", "time": float(i), "step": i, "loss": 4.0 - i * 0.05, "lr": 1e-3})
        if i % 5 == 0:   # val on the train curve up to step 20, one higher after it (inside train's range)
            both.apply({"type": "eval", "time": float(i), "step": i, "val_loss": 4.0 - i * 0.05 + (i > 20)})
    cells = []
    for s in (alone, both):
        plot = LossPlot()
        plot.set_runs([("nanogpt", s)])
        plot.configure(show_markers=False)
        cells.append(curve_cells(await mounted_render(plot, size=(60, 14))))
    train_cells, drawn = cells
    (train,) = set(train_cells.values())
    assert {drawn[cell] for cell in train_cells} == {train}     # every cell of the train line still shows it
    assert set(drawn.values()) - {train}                          # and the val line is drawn beside it


async def test_a_pane_times_its_fresh_redraws_and_not_the_passes_that_reuse_its_lines():
    # the run screen paces the chart by this; a status-line frame must not count as a chart redraw
    from textual.app import App
    from textual.widgets import Static

    s = started()
    for i in range(1, 50):
        s.apply({"type": "step", "time": float(i), "step": i, "loss": 4.0 / i ** 0.3, "lr": 1e-3})
    plot, other = LossPlot(), Static("x")
    plot.set_runs([("run", s)])

    class Two(App):
        def compose(self):
            yield plot
            yield other

    async with Two().run_test(size=(80, 24)) as pilot:
        await pilot.pause(0.05)
        first = plot.render_seconds
        assert first is not None and 0 < first < 5     # measured, in seconds of CPU
        for i in range(5):                               # other widgets redraw: the chart's lines are reused
            other.update(str(i))
            await pilot.pause(0.02)
        assert plot.render_seconds == first
        s.apply({"type": "step", "time": 50.0, "step": 50, "loss": 1.0, "lr": 1e-3})
        plot.set_runs([("run", s)])                     # a real redraw is timed again
        await pilot.pause(0.05)
        assert plot.render_seconds != first


def test_kernel_chart_draws_speedup_and_memory_saving_bars():
    chart = KernelChart()
    chart.set_events([{"name": "rmsnorm", "shape": [64, 128], "dtype": "float32", "ok": True, "torch_ms": 3.0,
                       "triton_ms": 1.0, "torch_mem": 1000, "triton_mem": 250}])
    text = chart.render().plain
    assert "rmsnorm 64x128 float32" in text and "3x" in text and "75.0% mem" in text and "█" in text


def test_the_ui_never_imports_torch():
    """The picker, the run screen on a recorded log, the runs browser and the comparison, in one process."""
    code = f"""
import asyncio, sys
from cockpit.app import CockpitApp
async def main():
    app = CockpitApp(watch={str(ROOT / 'tests/fixtures/tui/unet-tiny/events.jsonl')!r},
                     presets=[{{"name": "nanogpt", "arch": "gpt", "task": "lm"}}],
                     runs_dir={str(ROOT / 'tests/fixtures/runs')!r})
    async with app.run_test(size=(120, 40)) as pilot:
        for _ in range(200):
            await pilot.pause(0.05)
            if getattr(app.screen, "loaded", False):
                break
        await pilot.press("escape")
        await pilot.press("r")
        await pilot.pause(1.0)
        await pilot.press("space", "space", "c")
        await pilot.pause(1.0)
        print(type(app.screen).__name__)
asyncio.run(main())
print(sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "triton", "bitsandbytes")))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert lines[-2] == "CompareScreen"
    assert lines[-1] == "[]"


def test_the_empty_samples_pane_says_when_samples_come_from_the_runs_own_intervals():
    """Samples follow train.sample_interval as well as each eval: the pane says both, with the run's numbers."""
    from cockpit.widgets.samples_pane import when_samples_come
    from common.state import RunState

    s = RunState()
    assert when_samples_come(s) == "at each eval"
    s.apply({"v": 1, "type": "run_start", "time": 1.0, "run_id": "r", "preset": "p", "arch": "gpt", "task": "lm",
             "config": {"train": {"sample_interval": 100, "eval_interval": 250}}, "max_steps": 1000})
    assert when_samples_come(s) == "every 100 steps and at each eval (every 250)"
    s.config["train"]["sample_interval"] = 0
    assert when_samples_come(s) == "at each eval (every 250)"


async def test_a_cpu_runs_memory_is_ram_not_vram_and_its_largest_layers_come_first():
    """A CPU run has no VRAM: its bytes are RAM and no gauge against the GPU budget; a cut list of layers
    never hides the largest (dit: a 40 MiB block behind 512-byte layers)."""
    s = started()
    layers = [{"name": f"blocks.{i}.norm", "activation_bytes": 512, "param_bytes": 64} for i in range(6)]
    layers.insert(4, {"name": "blocks.3.attn", "activation_bytes": 40 * 2**20, "param_bytes": 2**20})
    s.apply({"type": "memory", "time": 1.0, "step": 0, "budget_bytes": 12 * 2**30, "layers": layers,
             "totals": {"params": 2**20, "grads": 2**20, "optimizer": 2**21, "activations": 41 * 2**20}})
    pane = MemoryPane()
    pane.update_state(s)
    text = (await mounted_render(pane, size=(58, 9))).plain
    first = text.splitlines()[0]
    assert first.startswith("RAM ") and "VRAM" not in text and "12.0 GiB" not in text, text
    assert "(sum of the parts; no allocator on CPU)" in text
    assert "blocks.3.attn" in text and "40.0 MiB" in text, text


# --- the samples pane --------------------------------------------------------------------------------------
CIFAR = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def image_sample(rows=2, cols=10, cell=32, classes=CIFAR):
    """A DiT-style sample grid: `rows` samples of each class, one class per column, each column its own grey."""
    import base64

    import numpy as np

    from common.events import Sample

    pad = 1
    h, w = rows * (cell + pad) - pad, cols * (cell + pad) - pad
    img = np.full((h, w, 3), 255, dtype=np.uint8)
    for j in range(cols):
        img[:, j * (cell + pad):j * (cell + pad) + cell] = 20 * j
    data = base64.b64encode(img.tobytes()).decode()
    return Sample(step=400, kind="image", image={"h": h, "w": w, "c": 3, "data": data}, classes=classes,
                  grid={"rows": rows, "cols": cols, "cell_h": cell, "cell_w": cell, "pad": pad},
                  sampler="ddim-20", guidance=4.0, prompt="ddim-20, guidance 4, EMA weights")


def printed(renderable, width: int) -> list[str]:
    from rich.console import Console

    console = Console(width=width, record=True, file=open("/dev/null", "w"), color_system=None)
    console.print(renderable)
    return console.export_text().rstrip("\n").split("\n")


def test_sample_headings_fit_every_pane_width_and_shorten_by_whole_words():
    """`text sample 1/5 @ step 89 ([ older, ]` was cut at the pane's edge: every heading now fits the width it
    is given, keeps which sample and step it is, and shortens the prompt at a word, never mid-word."""
    from cockpit.widgets.samples_pane import diff_heading, sample_heading
    from common.events import Sample

    prompt = "ROMEO: Wherefore art thou Romeo, deny thy father and refuse thy name"
    text = Sample(step=89, kind="text", text="x", prompt=prompt)
    for width in range(14, 160):
        for ev in (text, image_sample()):
            for browsing in (False, True):
                head = sample_heading(ev, 0, 5, width, browsing=browsing).plain
                assert len(head) <= width, (width, head)
                assert "1/5 @ step" in head and head.split("@ step ")[1].startswith(str(ev.step)), (width, head)
                if "prompt '" in head:                  # the prompt shown is whole words of it
                    stem = head.split("prompt '")[1].split("'")[0].removesuffix("…")
                    assert prompt.startswith(stem) and prompt[len(stem):][:1] in ("", " ", ",", ":"), (width, head)
                if browsing and "(" in head:
                    assert head.endswith(("([ older, ] newer)", "([ ])")), (width, head)
        diff = diff_heading(89, 100, width).plain
        assert len(diff) <= width and ("step 89 vs step 100" in diff or diff == "89 vs 100"), (width, diff)
    wide = sample_heading(text, 0, 5, 200, browsing=True).plain
    assert wide == f"text sample 1/5 @ step 89 · prompt '{prompt}'  ([ older, ] newer)"
    assert diff_heading(89, 100, 200).plain == "sample diff · step 89 vs step 100 (same prompt; new words highlighted)"


def test_an_image_grid_keeps_its_rows_and_columns_under_its_class_labels_at_every_pane_width():
    """DiT's 2x10 grid was reflowed into rows of 8+8+2 tiles with no labels: at pane widths from an 80-column
    terminal's to a 200-column one's it stays 2 rows of 10 columns, scaled down, each class named over its
    column (cut with an ellipsis, or numbered with a legend, when the names are wider than the columns)."""
    from cockpit.images import UPPER_HALF
    from cockpit.widgets.samples_pane import render_image

    ev = image_sample()
    for width in (27, 41, 60, 75, 120):
        lines = printed(render_image(ev, width, 30), width)
        grid_lines = [line for line in lines if line.startswith(UPPER_HALF)]
        labels, legend = lines[0], "\n".join(lines[1 + len(grid_lines):])
        assert lines[1:1 + len(grid_lines)] == grid_lines and grid_lines, lines
        drawn = len(grid_lines[0])
        assert drawn <= width and all(len(line) == drawn for line in grid_lines)
        # 10 columns of w cells with 0 or 1 between them, 2 rows of w cells (square) with the same gap
        cell, gap = next((c, g) for g in (1, 0) for c in range(1, 33) if 10 * (c + g) - g == drawn)
        assert len(grid_lines) == -(-(2 * (cell + gap) - gap) // 2), (width, len(grid_lines), cell)
        if all(len(n) <= cell for n in CIFAR):
            assert labels.split() == CIFAR, labels
        elif cell >= 4:                                 # cut to the column, each still telling its class
            assert [n.removesuffix("…") for n in labels.split()] == [n[:len(x) - 1] if x.endswith("…") else n
                                                                     for n, x in zip(CIFAR, labels.split())]
        else:                                           # numbered columns and the names in a legend
            assert labels.split() == [str(j) for j in range(1, 11)], labels
            for j, name in enumerate(CIFAR, 1):
                assert f"{j} {name}" in legend, legend
        for j in range(10):                             # each label sits over its own column
            start = j * (cell + gap)
            assert labels[start:start + cell].strip(), (width, j, labels)
    wide = printed(render_image(ev, 120, 30), 120)
    assert wide[0].split() == CIFAR


def test_an_image_grid_with_one_class_or_no_grid_metadata_names_the_classes_in_a_line():
    from cockpit.widgets.samples_pane import render_image

    same = image_sample(cols=3, classes=["all"] * 3)
    assert printed(render_image(same, 60, 20), 60)[0].split() == ["all"] * 3
    no_grid = image_sample(cols=3, classes=["cat", "dog", "bird"])
    no_grid.grid = None
    assert printed(render_image(no_grid, 60, 20), 60)[-1] == "classes: cat, dog, bird"


async def test_the_memory_panes_waiting_note_wraps_instead_of_being_cut_in_a_narrow_pane():
    s = started()
    pane = MemoryPane()
    from textual.app import App

    class One(App):
        def compose(self):
            yield pane

    async with One().run_test(size=(26, 6)) as pilot:
        pane.update_state(s)
        await pilot.pause(0.05)
        text = pane.render().plain
    assert "step 1)" in text and "…" not in text
    assert all(len(line) <= 26 for line in text.splitlines())


def test_a_text_to_image_grid_shows_the_prompt_it_was_generated_from_above_its_images():
    """A prompt typed with `s` on a text-conditioned run: the grid of its images comes under the prompt, whole
    (wrapped on a narrow pane), and the grid still fits the rows the pane has."""
    from cockpit.images import UPPER_HALF
    from cockpit.widgets.samples_pane import render_image

    prompt = "grinning face with smiling eyes and a red apple beside it"
    ev = image_sample(rows=2, cols=4, classes=None)
    ev.caption = prompt
    for width, height in ((30, 12), (60, 20), (120, 30)):
        lines = printed(render_image(ev, width, height), width)
        grid = [n for n, line in enumerate(lines) if line.startswith(UPPER_HALF)]
        above = " ".join(lines[:grid[0]])
        assert above.split() == ["prompt", f"“{prompt.split()[0]}", *prompt.split()[1:-1], f"{prompt.split()[-1]}”"]
        assert len(lines) <= height, (width, lines)


def test_prompts_over_a_grid_say_their_common_words_once():
    """Ten prompts "the digit zero" .. "the digit nine" over ten narrow columns: "the digit …" once, then the
    word that differs over each column (or numbered in the legend), so that the grid keeps the pane's rows."""
    from cockpit.widgets.samples_pane import class_labels, common_words

    words = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    prompts = [f"the digit {w}" for w in words]
    assert common_words(prompts) == ("the digit", words)
    assert common_words(["a 7", "a thin 7"]) == ("", ["a 7", "a thin 7"])       # "a" is not worth a line
    top, legend = class_labels(prompts, {"cols": 10, "cell_w": 5, "pad": 1}, 60)
    assert top.plain.split() == [fit if len(w) <= 5 else w[:4] + "…" for w, fit in zip(words, words)]
    assert legend.plain == "the digit …"
    top, legend = class_labels(prompts, {"cols": 10, "cell_w": 2, "pad": 1}, 30)
    assert top.plain.split() == [str(j) for j in range(1, 11)]
    assert legend.plain.startswith("the digit …\n1 zero  2 one") and len(legend.plain.split("\n")) <= 4
