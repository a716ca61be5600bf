"""The picker fills its rows as each preset's size is measured and says how far measuring has come: a cold
cache takes half a minute or more on a laptop CPU, and a table of "…" with no word of why looks stuck."""
from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

from cockpit import presets_info
from cockpit.app import CockpitApp
from cockpit.screens import picker

ROOT = Path(__file__).resolve().parents[1]


def row_text(table, key: str) -> str:
    return " ".join(str(c) for c in table.get_row(key))


async def test_rows_fill_one_by_one_and_the_title_counts_the_presets_measured(monkeypatch):
    release = threading.Event()
    first = {"name": "nanogpt", "n_params": 10_749_312, "est_vram_bytes": 2 * 2**30, "profile_here": "cpu"}
    second = {"name": "mingpt", "n_params": 2_750_000, "est_vram_bytes": 2**30, "profile_here": "cpu"}

    def stream(on_info):
        on_info(first, 1, 2)
        release.wait(30)             # the second preset is still being measured
        on_info(second, 2, 2)
        return [first, second]

    monkeypatch.setattr(picker, "preset_stubs", lambda: [{"name": "mingpt", "arch": "mingpt", "task": "lm"},
                                                         {"name": "nanogpt", "arch": "gpt", "task": "lm"}])
    monkeypatch.setattr(picker, "stream_presets_info", stream)
    app = CockpitApp()
    async with app.run_test(size=(120, 30)) as pilot:
        screen = app.screen
        deadline = time.monotonic() + 20
        while screen.progress != (1, 2) and time.monotonic() < deadline:
            await pilot.pause(0.05)
        table = screen.query_one("#presets")
        title = str(screen.query_one("#picker-title").render())
        assert "measuring sizes 1/2…" in title
        assert "10.75M" in row_text(table, "nanogpt")           # measured: shown at once
        assert "…" in row_text(table, "mingpt")                 # not yet
        release.set()
        while screen.measuring and time.monotonic() < deadline + 10:
            await pilot.pause(0.05)
        assert "2.75M" in row_text(table, "mingpt")
        assert "measuring" not in str(screen.query_one("#picker-title").render())


def test_the_cache_gives_every_preset_to_the_stream_without_measuring(tmp_path, monkeypatch):
    monkeypatch.setenv("COCKPIT_CACHE", str(tmp_path))
    monkeypatch.setattr(presets_info, "_fingerprint", lambda: "fixed")
    cached = [{"name": "nanogpt", "n_params": 10}, {"name": "mingpt", "n_params": 3}]
    (tmp_path / "presets-fixed.json").write_text(json.dumps(cached))
    monkeypatch.setattr(presets_info.subprocess, "Popen", None)   # measuring would fail loudly
    seen = []
    assert presets_info.stream_presets_info(lambda info, done, total: seen.append((info["name"], done, total))) \
        == cached
    assert seen == [("nanogpt", 1, 2), ("mingpt", 2, 2)]


def test_inspect_prints_each_preset_as_soon_as_it_is_measured():
    r = subprocess.run([sys.executable, "-m", "trainers.inspect", "--jsonl", "mingpt-sort", "nanogpt"],
                       capture_output=True, text=True, cwd=ROOT, timeout=300, check=True)
    lines = [json.loads(line) for line in r.stdout.splitlines()]
    assert [i["name"] for i in lines] == ["mingpt-sort", "nanogpt"]
    assert all(isinstance(i["n_params"], int) and i["n_params"] > 0 for i in lines)
