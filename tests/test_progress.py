"""Headless progress lines (`cockpit train PRESET --headless`): folded by the cockpit's own reducer, so they
say what the log says."""
from __future__ import annotations

import re

from tests.conftest import TINY_GPT, events_of, train_in_process


def test_headless_progress_prints_start_steps_with_eta_evals_and_the_end(tmp_path, capsys):
    log = tmp_path / "events.jsonl"
    code = train_in_process("nanogpt", *TINY_GPT, "train.max_steps=20", "train.eval_interval=10",
                            "train.log_interval=5", "--progress", log=log)
    assert code == 0
    out = capsys.readouterr().out.splitlines()
    start = events_of(log, "run_start")[0]
    assert out[0].startswith("nanogpt (gpt, ") and f"on {start['device']}, cpu profile" in out[0]
    steps = [l for l in out if l.startswith("step ")]
    assert [int(re.match(r"step +(\d+)/20", l).group(1)) for l in steps] == [1, 5, 10, 15, 20]
    last = events_of(log, "step")[-1]
    assert f"loss {last['loss']:.4f}" in steps[-1] and "tok/s" in steps[-1]
    assert "ETA --:--" in steps[0] and re.search(r"ETA \d+:\d\d", steps[1])   # one point: no rate yet
    evals = events_of(log, "eval")
    assert [l for l in out if l.startswith("eval @ ")] == [
        f"eval @ {e['step']}: val loss {e['val_loss']:.4f} train_loss {e['metrics']['train_loss']:.4g}"
        for e in evals]
    end = events_of(log, "run_end")[0]
    assert out[-1].startswith(f"run completed at step 20: best val loss "
                              f"{end['metrics']['best_val_loss']:.4f}, wall ")


def test_progress_leaves_system_events_to_the_sampler_thread():
    """The sampler emits from its own thread: Progress prints nothing for them and keeps them out of its
    state, which the loop's thread folds."""
    import io

    from common import events as E
    from trainers.progress import Progress

    p = Progress(io.StringIO())
    p(E.System(cpu={"util_pct": 50.0}))
    assert p.state.events == 0 and p.out.getvalue() == ""
