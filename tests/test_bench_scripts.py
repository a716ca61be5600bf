"""The benchmark scripts' arithmetic (scripts/): a figure in BENCHMARKS.md is only as good as the code that
turns logs into it."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
from bench_overhead import SETTLE_S, interleaved_ratio  # noqa: E402
from bench_speed import write_section  # noqa: E402


def interleaved_log(watched_ms: float, unwatched_ms: float, windows: int = 20, window_s: float = 3.0,
                    evals_every: int = 0, catch_up_ms: float = 0.0):
    """Step events (one per step) and toggles of a run whose steps take watched_ms while the UI runs; the
    first SETTLE_S of a watched window may be slower still (catch_up_ms), as after a real thaw."""
    events, toggles, t, step = [], [], 1000.0, 0
    for w in range(windows):
        watched = w % 2 == 0
        start = t
        toggles.append((start, watched, 0.01 * w))
        while t < start + window_s:
            slow = watched and t < start + SETTLE_S
            t += (catch_up_ms if slow and catch_up_ms else watched_ms if watched else unwatched_ms) / 1000
            step += 1
            events.append({"type": "step", "step": step, "time": t})
            if evals_every and step % evals_every == 0:
                t += 0.5                                # an eval: a long gap that is not a step
                events.append({"type": "eval", "step": step, "time": t - 0.01})
    toggles.append((t, None, 0.01 * windows))
    return events, toggles


def test_interleaved_ratio_finds_a_two_percent_slowdown():
    r = interleaved_ratio(*interleaved_log(watched_ms=102.0, unwatched_ms=100.0))
    assert r["overall"] == pytest.approx(100 / 102, abs=2e-3)
    assert r["pairs"] == 10 and r["median"] == pytest.approx(100 / 102, abs=2e-3)


def test_interleaved_ratio_leaves_out_evals_and_the_catch_up_after_a_thaw():
    events, toggles = interleaved_log(watched_ms=100.0, unwatched_ms=100.0, evals_every=7, catch_up_ms=300.0)
    r = interleaved_ratio(events, toggles)
    assert r["overall"] == pytest.approx(1.0, abs=2e-3)    # neither the evals nor the catch-up count


def test_write_section_replaces_its_own_block_and_keeps_the_text_around_it(tmp_path):
    md = tmp_path / "speed.md"
    write_section(md, "a", "first")
    md.write_text(md.read_text() + "\n### Notes kept by hand\n")
    write_section(md, "a", "second")
    write_section(md, "b", "other")
    text = md.read_text()
    assert "first" not in text and "second" in text and "other" in text
    assert "<!-- a:end -->\n\n### Notes kept by hand\n" in text
    assert text.index("<!-- a:end -->") < text.index("<!-- b:start -->")
