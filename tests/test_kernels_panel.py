"""The kernels panel (`k`): it runs the benchmark only when asked, shows the last results measured on this
machine at once when reopened, never shows interpreter timings as speedups, survives a bad cache file, and
its chart labels fit at 80, 120 and 200 columns. The benchmark itself is a fake subprocess here."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from cockpit import kernels_cache
from cockpit.app import CockpitApp
from cockpit.screens import kernels as kmod
from tests.conftest import ROOT

PRESETS = [{"name": "nanogpt", "arch": "gpt", "task": "lm", "description": "nanoGPT on Shakespeare"}]


def interpreter_event(name: str, **fields) -> dict:
    """A result as `cockpit kernels --json` streams it from Triton's CPU interpreter."""
    return {"type": "kernel", "v": 1, "name": name, "shape": [2, 2, 32, 32], "dtype": "float32",
            "backend": "triton-interpreter", "device": "CPU (x86_64), Triton interpreter", "timing": "interpreter",
            "note": "interpreter timings, not GPU timings", "ok": True, "max_abs_err": 2e-7, "rel_rms_err": 3e-8,
            "grad_rel_rms_err": 4e-8, "tol_rms": 1e-5, "tol_max": 1e-4, "torch_fwd_ms": 16.2, "torch_ms": 8.1,
            "triton_fwd_ms": 8.0, "triton_ms": 3.57, "torch_mem": 4000, "triton_mem": 1000, "speedup": 2.27,
            "mem_saving": 0.75, **fields}


def gpu_event(name: str, shape: list[int], dtype: str, speedup: float) -> dict:
    return {"type": "kernel", "v": 1, "name": name, "shape": shape, "dtype": dtype, "backend": "triton",
            "device": "NVIDIA GeForce RTX 4070", "timing": "cuda", "ok": True, "max_abs_err": 1e-6,
            "torch_ms": 2.0 * speedup, "triton_ms": 2.0, "torch_mem": 4 << 20, "triton_mem": 1 << 20}


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("COCKPIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(kmod, "kernels_available", lambda: True)
    return tmp_path / "cache" / kernels_cache.FILE_NAME


def fake_benchmark(events: list[dict], calls: list):
    """argv_for of a benchmark that prints `events` (those of one kernel with --only) and records each start."""
    def argv_for(only=None):
        calls.append(only)
        chosen = [e for e in events if only in (None, e["name"])]
        code = "import json\n" + "".join(f"print(json.dumps({e!r}))\n" for e in chosen)
        return [sys.executable, "-c", code]
    return argv_for


async def until(pilot, cond, what: str, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await pilot.pause(0.05)


def status_of(screen) -> str:
    return str(screen.query_one("#kernels-status").render())


def chart_of(screen) -> str:
    return screen.query_one("#kernels-chart").render().plain


async def test_opening_the_panel_runs_nothing_until_asked_and_reopening_shows_the_cached_results(cache):
    events = [interpreter_event("softmax_causal"), interpreter_event("gelu", shape=[64, 512])]
    calls: list = []
    argv_for = fake_benchmark(events, calls)
    app = CockpitApp(presets=PRESETS)
    async with app.run_test(size=(120, 40)) as pilot:
        app.push_screen(kmod.KernelsScreen(argv_for=argv_for))
        await until(pilot, lambda: isinstance(app.screen, kmod.KernelsScreen), "the panel")
        screen = app.screen
        await pilot.pause(0.3)
        assert calls == [] and screen.running is None                # opening runs no benchmark
        assert "r runs the comparison" in status_of(screen)
        await pilot.press("r")
        await until(pilot, lambda: screen.running is None and len(screen.results) == 2, "the run")
        assert calls == [None]
        await pilot.press("escape")
        await until(pilot, lambda: not isinstance(app.screen, kmod.KernelsScreen), "the panel to close")

        app.push_screen(kmod.KernelsScreen(argv_for=argv_for))     # reopened: the results are there at once
        await until(pilot, lambda: isinstance(app.screen, kmod.KernelsScreen), "the panel")
        screen = app.screen
        await pilot.pause()
        assert screen.query_one("#kernels-table").row_count == 2
        assert "results measured on this machine" in status_of(screen)
        await pilot.pause(0.3)
        assert calls == [None]                                       # and still nothing ran
        await pilot.press("enter")                                   # the highlighted kernel, when asked
        await until(pilot, lambda: screen.running is None and len(calls) == 2, "the re-run")
        assert calls == [None, "softmax_causal"]


async def test_the_panel_keeps_the_runs_own_kernel_events_and_adds_the_cached_ones(cache):
    kernels_cache.save([interpreter_event("gelu", shape=[64, 512])])
    own = [gpu_event("rmsnorm", [8192, 768], "float32", 1.8)]
    app = CockpitApp(presets=PRESETS)
    async with app.run_test(size=(120, 40)) as pilot:
        app.push_screen(kmod.KernelsScreen(own, argv_for=fake_benchmark([], [])))
        await until(pilot, lambda: isinstance(app.screen, kmod.KernelsScreen), "the panel")
        await pilot.pause()
        assert [k[0] for k in app.screen.results] == ["rmsnorm", "gelu"]


async def test_interpreter_results_show_correctness_and_say_timings_need_a_gpu(cache):
    """softmax_causal's interpreter times made a 2.27x 'speedup' (and a forward slower than forward +
    backward): none of it is drawn as a speedup."""
    calls: list = []
    app = CockpitApp(presets=PRESETS)
    async with app.run_test(size=(120, 40)) as pilot:
        app.push_screen(kmod.KernelsScreen(argv_for=fake_benchmark([interpreter_event("softmax_causal")], calls)))
        await until(pilot, lambda: isinstance(app.screen, kmod.KernelsScreen), "the panel")
        screen = app.screen
        await pilot.press("r")
        await until(pilot, lambda: screen.running is None and screen.results, "the run")
        chart, status = chart_of(screen), status_of(screen)
        assert "2.27" not in chart and "speedup" not in chart and "█" in chart    # the memory bar stays
        assert "timings need a GPU" in chart and "timings need a GPU" in status
        assert "ok: rel error 4.0e-08, tolerance 1e-05" in chart and "75.0% mem" in chart
        table = screen.query_one("#kernels-table")
        row = dict(zip(kmod.COLUMNS, map(str, table.get_row_at(0))))
        assert row["ok"] == "ok" and row["speedup"] == "n/a"
        assert row["torch ms"] == "n/a" and row["triton ms"] == "n/a" and row["mem saved"] == "75.0%"


@pytest.mark.parametrize("columns", [80, 120, 200])
async def test_chart_labels_are_whole_at_80_120_and_200_columns(cache, columns):
    events = [gpu_event("fused_linear_ce", [8192, 768, 50257], "bfloat16", 1.4),
              gpu_event("retention", [8, 12, 1024, 64, 128], "bfloat16", 0.7),
              gpu_event("rmsnorm", [8192, 768], "float32", 2.1),
              interpreter_event("softmax_causal")]
    labels = ["fused_linear_ce 8192x768x50257 bfloat16", "retention 8x12x1024x64x128 bfloat16",
              "rmsnorm 8192x768 float32", "softmax_causal 2x2x32x32 float32"]
    app = CockpitApp(presets=PRESETS)
    async with app.run_test(size=(columns, 40)) as pilot:
        app.push_screen(kmod.KernelsScreen(events, argv_for=fake_benchmark([], [])))
        await until(pilot, lambda: isinstance(app.screen, kmod.KernelsScreen), "the panel")
        await pilot.pause()
        chart = app.screen.query_one("#kernels-chart")
        lines = chart.render().plain.splitlines()
        assert chart.size.width > 0
        assert all(len(line) <= chart.size.width for line in lines), (chart.size.width, lines)
        for label in labels:
            assert any(line.startswith(label) for line in lines), label
        assert any("2.1x" in line for line in lines) and any("0.7x" in line for line in lines)


# --- the cache file -------------------------------------------------------------------------------------------

def test_results_are_kept_per_kernel_shape_dtype_backend_and_machine(cache):
    first = interpreter_event("gelu", shape=[64, 512])
    kernels_cache.save([first, gpu_event("gelu", [64, 512], "float32", 1.5)])
    kernels_cache.save([{**first, "max_abs_err": 5e-7}])               # the same key: replaced
    got = kernels_cache.load()
    assert got.note is None and len(got.events) == 2
    assert {e["backend"]: e["max_abs_err"] for e in got.events} == {"triton-interpreter": 5e-7, "triton": 1e-6}
    data = json.loads(cache.read_text())
    data["results"][0]["host"] = "another-machine"                    # measured elsewhere: not shown here
    cache.write_text(json.dumps(data))
    assert len(kernels_cache.load().events) == 1


def test_results_of_a_changed_kernel_are_not_shown(cache):
    kernels_cache.save([interpreter_event("gelu", shape=[64, 512])])
    data = json.loads(cache.read_text())
    data["results"][0]["source"] = "0" * 16                            # what an edited gelu.py gives
    cache.write_text(json.dumps(data))
    got = kernels_cache.load()
    assert got.events == [] and "code changed" in got.note


@pytest.mark.parametrize("content, why", [
    (b"{\"kind\": \"cockpit kernels res", "not JSON"),
    (b"\xff\xfe\x00garbage", "not JSON"),
    (b"[1, 2, 3]", "not a results file"),
    (b'{"kind": "something else", "results": []}', "not a results file"),
    (b'{"kind": "cockpit kernels results", "version": 99, "results": []}', "another version"),
    (b"[" * 100_000 + b"]" * 100_000, "not JSON"),
])
def test_a_corrupt_or_foreign_cache_file_is_ignored_with_a_note_and_replaced(cache, content, why):
    cache.parent.mkdir(parents=True)
    cache.write_bytes(content)
    got = kernels_cache.load()
    assert got.events == [] and why in got.note and str(cache) in got.note
    assert kernels_cache.save([interpreter_event("gelu")]) is None
    assert len(kernels_cache.load().events) == 1


def test_results_that_do_not_validate_are_skipped_and_counted(cache):
    kernels_cache.save([interpreter_event("gelu")])
    data = json.loads(cache.read_text())
    data["results"] += [{"host": kernels_cache.this_host(), "source": "x", "saved": 1.0,
                         "event": {"name": "rmsnorm", "shape": [-1]}}, "junk", {"event": 3}]
    cache.write_text(json.dumps(data))
    got = kernels_cache.load()
    assert [e["name"] for e in got.events] == ["gelu"] and "3 unreadable result(s)" in got.note


def test_a_cache_path_that_is_a_directory_costs_a_note_not_a_crash(cache):
    cache.mkdir(parents=True)
    assert "not a regular file" in kernels_cache.load().note
    assert "not written" in kernels_cache.save([interpreter_event("gelu")])


async def test_the_panel_opens_over_a_corrupt_cache_and_says_it_ignored_it(cache):
    cache.parent.mkdir(parents=True)
    cache.write_text("{not json")
    app = CockpitApp(presets=PRESETS)
    async with app.run_test(size=(120, 40)) as pilot:
        app.push_screen(kmod.KernelsScreen(argv_for=fake_benchmark([], [])))
        await until(pilot, lambda: isinstance(app.screen, kmod.KernelsScreen), "the panel")
        await pilot.pause()
        assert "ignored the kernels cache" in status_of(app.screen) and app.is_running


def test_opening_the_panel_over_cached_results_never_imports_torch(cache):
    kernels_cache.save([interpreter_event("gelu")])
    code = """
import asyncio, sys
from cockpit.app import CockpitApp
from cockpit.screens.kernels import KernelsScreen
async def main():
    app = CockpitApp(presets=[{"name": "nanogpt", "arch": "gpt", "task": "lm"}])
    async with app.run_test(size=(80, 24)) as pilot:
        app.push_screen(KernelsScreen())
        await pilot.pause(0.5)
        print(app.screen.query_one("#kernels-table").row_count)
asyncio.run(main())
print(sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "triton")))
"""
    env = {**os.environ, "COCKPIT_CACHE": str(cache.parent)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:2] == ["1", "[]"], out.stdout
