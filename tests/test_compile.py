"""train.compile: training steps run through torch.compile; weights, eval, samples and checkpoints stay the plain
model's, so a checkpoint loads the same whether its run was compiled or not."""
from __future__ import annotations

import math

import pytest
import torch
from torch._dynamo.eval_frame import OptimizedModule

from tests.conftest import TINY_GPT, events_of

TINY = (*TINY_GPT, "train.max_steps=3", "train.log_interval=1", "train.eval_iters=1", "train.sample_tokens=8")


def test_compile_defaults_to_on_for_cuda_and_off_on_cpu():
    from trainers import config

    assert config.load("nanogpt", has_cuda=True)["train"]["compile"] is True
    assert config.load("nanogpt", has_cuda=False)["train"]["compile"] is False
    assert config.load("nanogpt", ["train.compile=true"], has_cuda=False)["train"]["compile"] is True
    assert config.load("nanogpt", ["train.compile=false"], has_cuda=True)["train"]["compile"] is False


@pytest.mark.slow
def test_compile_true_trains_through_torch_compile_with_the_eager_losses(tmp_path):
    from trainers import config
    from trainers.loop import Trainer

    runs = {}
    try:
        for flag in ("false", "true"):
            torch._dynamo.utils.counters.clear()
            cfg = config.load("nanogpt", [*TINY, f"train.compile={flag}"], has_cuda=False)
            trainer = Trainer(cfg, tmp_path / flag / "events.jsonl")
            assert trainer.run() == 0
            runs[flag] = trainer, torch._dynamo.utils.counters["frames"]["ok"]
    finally:
        torch._dynamo.reset()
    (eager, eager_frames), (compiled, compiled_frames) = runs["false"], runs["true"]
    assert eager.model is eager.raw_model and eager_frames == 0
    assert isinstance(compiled.model, OptimizedModule) and compiled.model._orig_mod is compiled.raw_model
    assert compiled_frames > 0, "the compiled run must have traced the model's forward"

    want = {e["step"]: e["loss"] for e in events_of(tmp_path / "false" / "events.jsonl", "step")}
    got = {e["step"]: e["loss"] for e in events_of(tmp_path / "true" / "events.jsonl", "step")}
    assert sorted(got) == [1, 2, 3]
    for step, loss in got.items():
        assert math.isfinite(loss) and loss == pytest.approx(want[step], rel=1e-4), step
    # the activation probe's step runs eagerly, so memory is still charged to each layer
    memory = events_of(tmp_path / "true" / "events.jsonl", "memory")[0]
    assert {r["name"] for r in memory["layers"] if r["activation_bytes"]} >= {"transformer.h.0", "lm_head"}

    state = torch.load(tmp_path / "true" / "ckpt.pt", weights_only=True)["model"]
    assert sorted(state) == sorted(eager.raw_model.state_dict())  # no `_orig_mod.` prefixes
    eager.raw_model.load_state_dict(state)
