"""The fit planner (`cockpit plan`, train.batch_size=auto) and the published-scale sizes (profile=paper).

The planner's memory is the meta-device estimate (trainers/plan.py Estimator); these tests check that its
choice is the largest micro-batch that fits that estimate, that the estimate agrees with what the activation
probe measures on a real CPU step, that the trainer applies the plan, and that every paper size builds with
its stated parameter count and trains."""
from __future__ import annotations

import json

import pytest
import torch

from common.plan import (
    largest_fit,
    make_plan,
    plan_from_facts,
    split_rows,
    usable_bytes,
)
from tests.conftest import events_of, train_in_process
from trainers import config
from trainers.memory import ActivationProbe
from trainers.plan import Estimator
from trainers.tasks import load_task

# one preset per architecture, at its CPU profile's shape
ARCH_PRESETS = ["nanogpt", "mingpt", "bitnet", "mamba", "rwkv", "retnet", "moe", "dit", "unet"]

# profile=paper: the parameters each builds with (GPT-2 BPE, 32x32 images), by the configuration it follows
PAPER_SIZES = {
    "gpt2-124m": 124.5e6,  # GPT-2 small, 124M
    "mamba": 129.1e6,      # Mamba-130M (24 x 768)
    "rwkv": 173.5e6,       # RWKV-6 L12-D768 (0.19B with the World tokenizer's 65k vocabulary)
    "retnet": 123.6e6,     # torchscale's small shape, 12 x 768, 3 heads, 2d value and FFN
    "bitnet": 123.5e6,     # BitNet b1.58 ~125M, 12 x 768
    "moe": 322.8e6,        # GPT-2 small with 8 experts on every other block
    "dit": 129.5e6,        # DiT-B/2, 130M
    "unet": 38.3e6,        # DDPM's CIFAR-10 U-Net shape (DDPM reports 35.7M: here a class embedding, attention lower)
}

# Activations: the estimate counts each saved tensor once by identity on the meta device, the probe each
# saved storage once on the CPU (a freed storage's address can be reused within a step, and a view keeps
# its whole storage), so they agree to within this share.
ACTIVATION_TOLERANCE = 0.20


def full_cfg(preset: str, *overrides: str) -> dict:
    cfg = config.load(preset, list(overrides), has_cuda=True)
    cfg["device"] = "cpu"
    return cfg


def test_largest_fit_is_the_last_micro_batch_under_the_budget_for_any_growing_cost():
    costs = [lambda b: 100 + 7 * b, lambda b: 100 + b * b, lambda b: 100 + 50 * (b // 4), lambda b: 100]
    for cost in costs:
        for budget in (50, 100, 107, 140, 1000, 12_345):
            fit = largest_fit(cost, budget, limit=5000)
            expected = max((b for b in range(1, 5001) if cost(b) <= budget), default=0)
            assert fit == expected, (budget, fit, expected)


def test_split_rows_keeps_the_rows_of_a_step_exactly():
    assert split_rows(512, 22) == (16, 32)
    assert split_rows(512, 1000) == (512, 1)
    assert split_rows(96, 10) == (8, 12)
    assert split_rows(7, 3) == (1, 7)
    assert split_rows(64, 0) == (0, 0)


def test_the_planned_micro_batch_fits_the_estimate_and_the_next_one_up_does_not():
    est = Estimator(full_cfg("nanogpt"))
    plan = est.plan(2.0)
    budget = usable_bytes(2.0)
    assert plan["budget"] == budget and plan["chosen"] == "off"
    for mode, checkpointing in (("off", False), ("on", True)):
        m = plan["modes"][mode]
        cost = est.cost(checkpointing)
        assert m["fit"] >= 2
        assert cost(m["fit"]) <= budget < cost(m["fit"] + 1), mode
        assert m["micro"] * m["accum"] == plan["rows"] == 64 and m["micro"] <= m["fit"]
    assert plan["modes"]["on"]["fit"] > plan["modes"]["off"]["fit"]  # checkpointing frees room


def test_the_plan_from_cached_facts_matches_the_measured_plan():
    est = Estimator(full_cfg("nanogpt"))
    measured, cached = est.plan(2.0), plan_from_facts(est.facts(), 2.0)
    for mode in ("off", "on"):
        assert abs(cached["modes"][mode]["fit"] - measured["modes"][mode]["fit"]) <= 1
        assert cached["modes"][mode]["micro"] == measured["modes"][mode]["micro"]


def test_what_does_not_fit_says_why():
    static = {"weights": 4 * 2**30, "grads": 4 * 2**30, "optimizer": 8 * 2**30}
    plan = make_plan(static, {"off": lambda b: 16 * 2**30 + b}, usable_bytes(12), 64, 8, 12.0)
    assert plan["chosen"] is None and "weights, grads and optimizer state alone" in plan["notes"][0]
    small = {"weights": 2**30, "grads": 2**30, "optimizer": 2**30}
    plan = make_plan(small, {"off": lambda b: 3 * 2**30 + b * 20 * 2**30, "on": lambda b: 3 * 2**30 + b * 2**30},
                     usable_bytes(12), 64, 8, 12.0)
    assert plan["chosen"] == "on" and plan["modes"]["on"]["micro"] == 4
    assert "not even one row fits" in plan["notes"][0]


@pytest.mark.parametrize("preset", ARCH_PRESETS)
def test_estimate_agrees_with_the_activation_probe_on_a_cpu_step(preset):
    overrides = ["profile=cpu", "device=cpu", "train.batch_size=2"]
    if preset not in ("dit", "unet"):
        overrides.append("model.block_size=32")
    cfg = config.load(preset, overrides)
    est = Estimator(cfg, dtype=torch.float32)
    estimated = est.activations(2)
    torch.manual_seed(0)
    task = load_task(cfg, torch.device("cpu"))
    model = task.build_model().train()
    probe = ActivationProbe(model)
    with probe.capture():
        loss = task.loss(model, task.get_batch("train", 0))
    loss.backward()
    assert est.n_params == sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    assert abs(estimated - probe.total) <= ACTIVATION_TOLERANCE * probe.total, (estimated, probe.total)


def test_batch_size_auto_trains_with_the_planned_micro_batch(tmp_path):
    # the CPU profile's model on 256-token rows: about 9 rows fit 0.1 GB, fewer than the preset's 32
    overrides = ["device=cpu", "model.block_size=256", "train.grad_accum=4", "vram_budget_gb=0.1",
                 "train.max_steps=2", "train.eval_iters=1", "train.sample_interval=0", "train.system_interval=0.5"]
    cfg = config.load("nanogpt", overrides + ["train.batch_size=auto"])
    plan = Estimator(cfg, dtype=torch.float32).plan(0.1)
    chosen = plan["modes"][plan["chosen"]]
    assert 1 <= chosen["micro"] < 32 <= plan["rows"]  # the budget, not the preset's 32 rows, decides
    log = tmp_path / "auto" / "events.jsonl"
    assert train_in_process("nanogpt", *overrides, "train.batch_size=auto", log=log) == 0
    train = events_of(log, "run_start")[0]["config"]["train"]
    assert (train["batch_size"], train["grad_accum"]) == (chosen["micro"], chosen["accum"])
    assert train["batch_size"] * train["grad_accum"] == 32 * 4  # the preset's token batch, kept
    lines = [e["message"] for e in events_of(log, "log") if "train.batch_size=auto" in e["message"]]
    assert lines and f"micro-batch {chosen['micro']} x grad_accum {chosen['accum']}" in lines[0]


def test_cockpit_plan_prints_the_plan_and_its_json(capsys):
    from cockpit.cli import main

    assert main(["plan", "nanogpt", "--vram", "2"]) == 0
    text = capsys.readouterr().out
    assert "without checkpointing: up to" in text and "with checkpointing: up to" in text and "<- planned" in text
    assert main(["plan", "nanogpt", "--vram", "2", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["preset"] == "nanogpt" and plan["chosen"] == "off" and plan["vram_gb"] == 2.0
    assert main(["plan", "nanogpt", "profile=paper"]) == 2
    assert "has no `profiles.paper`" in capsys.readouterr().err


@pytest.mark.parametrize("preset", sorted(PAPER_SIZES))
def test_paper_size_builds_on_the_meta_device_with_its_stated_parameters(preset):
    est = Estimator(full_cfg(preset, "profile=paper"))
    assert abs(est.n_params - PAPER_SIZES[preset]) <= 0.05 * PAPER_SIZES[preset], est.n_params
    one_row = est.cost(est.offers_checkpointing)(1)
    assert one_row <= usable_bytes(12.0)  # and it fits the 12 GB card it is meant for


@pytest.mark.parametrize("preset", sorted(PAPER_SIZES))
def test_paper_size_trains_two_steps_on_cpu(preset, tmp_path):
    """The full published shape, trained for 2 steps on the CPU; only the rows are cut (1 row, and 64 tokens
    for the language models) so that each step takes seconds. The model's initialisation, AdamW over every
    weight and the checkpoint the run ends with still scale with the parameters: the 323M MoE is the slowest."""
    overrides = ["profile=paper", "device=cpu", "train.max_steps=2", "train.batch_size=1", "train.grad_accum=1",
                 "train.eval_iters=1", "train.eval_interval=1000", "train.sample_interval=0",
                 "train.memory_interval=0", "train.checkpoint_interval=0", "train.compile=false",
                 "train.log_interval=1", "train.internals_interval=0"]  # the probe (80 images through a 130M
    # DiT at its first step) would take minutes on a CPU and says nothing about the size
    if preset in ("dit", "unet"):
        overrides += ["sample.eval_samples=0", "sample.steps=1", "sample.rows=1", "sample.cols=1"]
    else:
        overrides += ["model.block_size=64", "train.sample_tokens=1"]
    log = tmp_path / preset / "events.jsonl"
    assert train_in_process(preset, *overrides, log=log) == 0
    start = events_of(log, "run_start")[0]
    assert start["profile"] == "paper"
    assert abs(start["n_params"] - PAPER_SIZES[preset]) <= 0.05 * PAPER_SIZES[preset]
    steps = events_of(log, "step")
    assert [s["step"] for s in steps][-1] == 2 and all(s["loss"] == s["loss"] for s in steps)
    assert events_of(log, "run_end")[-1]["status"] == "completed"
