"""The objective sample-quality check: a digit classifier trained on real digits judges diffusion samples.

The full acceptance numbers (unet >= 70%, dit >= 60% after the CPU profile) come from
`python scripts/bench_diffusion.py` (benchmarks/results/diffusion.md); here a shortened unet run through the
real trainer, at the digits' native 8x8 resolution to keep it quick, must already draw digits of the
conditioned class far more often than chance (10%).
"""
from __future__ import annotations

import json

import pytest
import torch

from trainers import config
from trainers.digit_classifier import get_classifier, score_samples
from trainers.images import load_digits

SHORT_STEPS = 150


def test_digit_classifier_recognises_at_least_95_percent_of_held_out_real_digits():
    _, acc = get_classifier(16)
    assert acc >= 0.95


def test_classifier_counts_a_sample_only_for_the_class_it_shows():
    digits = load_digits(16)
    x, y = digits.images[:300], digits.labels[:300]
    assert score_samples(x, y) > 0.95
    assert score_samples(x, (y + 1) % 10) < 0.05, "a digit is not counted for another class"
    shifted = torch.roll(x, shifts=1, dims=-1)  # a pixel's shift, as samples may be, is still recognised
    assert score_samples(shifted, y) > 0.9


@pytest.mark.slow
def test_short_cpu_unet_run_draws_the_conditioned_digit_far_above_chance(tmp_path):
    from trainers.loop import Trainer

    cfg = config.load("unet", ["model.image_size=8", f"train.max_steps={SHORT_STEPS}",
                               f"train.eval_interval={SHORT_STEPS}", "train.sample_interval=0", "train.checkpoint_interval=0", "train.memory_interval=0",
                               "train.system_interval=60", "sample.eval_samples=100"],
                      profile="cpu", has_cuda=False)
    log = tmp_path / "events.jsonl"
    assert Trainer(cfg, log).run() == 0
    events = [json.loads(line) for line in log.read_text().splitlines()]
    evals = [e for e in events if e["type"] == "eval"]
    samples = [e for e in events if e["type"] == "sample"]
    assert evals and samples and samples[-1]["kind"] == "image" and samples[-1]["sampler"] == "ddim-20"
    acc = evals[-1]["metrics"]["sample_accuracy"]
    assert acc >= 0.6, f"only {acc:.0%} of samples show their class after {SHORT_STEPS} steps (chance 10%)"
