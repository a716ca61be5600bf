"""Every sequence preset trains through the real loop on its CPU profile: the loss falls within a few steps,
and the run writes the memory, system, eval and sample events the cockpit shows."""
from __future__ import annotations

import pytest

from tests.conftest import events_of, train_in_process

PRESETS = ["bitnet", "mamba", "rwkv", "retnet", "moe", "gpt2-124m", "llama", "speedrun"]
FEW_STEPS = ("profile=cpu", "train.max_steps=16", "train.batch_size=8", "train.warmup_steps=2",
             "train.log_interval=1", "train.eval_interval=16", "train.eval_iters=2", "train.sample_tokens=24",
             "train.system_interval=0.2", "train.checkpoint_interval=0")


def mean(xs):
    return sum(xs) / len(xs)


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_trains_a_few_steps_through_the_real_loop(preset, tmp_path):
    log = tmp_path / "run" / "events.jsonl"
    assert train_in_process(preset, *FEW_STEPS, log=log) == 0
    start = events_of(log, "run_start")[0]
    assert start["arch"] == start["config"]["arch"] and start["profile"] == "cpu"
    assert start["config"]["data"]["tokenizer"] == "char"  # CPU profiles report character-level loss
    losses = [e["loss"] for e in events_of(log, "step")]
    assert len(losses) == 16
    assert mean(losses[-4:]) < mean(losses[:4]) - 0.1, losses
    memory = events_of(log, "memory")
    assert memory, "no memory event"
    totals = memory[0]["totals"]
    assert totals["params"] > 0 and totals["activations"] > 0
    assert any(layer["activation_bytes"] > 0 for layer in memory[0]["layers"])
    assert events_of(log, "system"), "no system event"
    evals = events_of(log, "eval")
    assert evals and evals[-1]["step"] == 16 and evals[-1]["val_loss"] < losses[0]
    samples = events_of(log, "sample")
    assert samples and samples[-1]["kind"] == "text" and len(samples[-1]["text"]) == 24
    assert events_of(log, "run_end")[-1]["status"] == "completed"
    if preset == "moe":
        experts = evals[-1]["experts"]
        assert len(experts["counts"]) == 8 and sum(experts["counts"]) > 0
        assert isinstance(experts["balance_loss"], float) and isinstance(experts["dropped"], int)
    if preset == "bitnet":
        assert 0 < evals[-1]["metrics"]["ternary_zero_frac"] < 1


def test_bitnet_two_stage_schedule_reaches_the_optimizer_in_the_loop(tmp_path):
    from trainers import config
    from trainers.loop import lr_at

    log = tmp_path / "run" / "events.jsonl"
    assert train_in_process("bitnet", *FEW_STEPS, log=log) == 0
    t = config.load("bitnet", list(FEW_STEPS))["train"]
    lrs = {e["step"]: e["lr"] for e in events_of(log, "step")}
    assert lrs[4] == pytest.approx(lr_at(3, t))           # first half: the loop's schedule
    assert lrs[12] == pytest.approx(0.5 * lr_at(11, t))   # second half: stage2_lr_scale = 0.5
