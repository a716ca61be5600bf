"""Mixture-of-Experts: top-2 routing computes what it says, capacity drops are counted, and on the CPU
profile the load-balancing loss evens out the experts."""
from __future__ import annotations

import math

import pytest
import torch

from trainers import config
from trainers.loop import lr_at
from trainers.models import build_model
from trainers.models.moe import MoE
from trainers.tasks import load_task


def tiny_moe_layer(**kw):
    torch.manual_seed(0)
    model = build_model("moe", dict(n_layer=2, n_head=2, n_embd=16, block_size=16, **kw), vocab_size=11)
    return model, model.moe_layers[0]


def expert(layer: MoE, e: int, x):
    """Expert e as a plain MLP (c_fc -> GELU -> c_proj)."""
    return torch.nn.functional.gelu(x @ layer.c_fc[e], approximate="tanh") @ layer.c_proj[e]


def test_moe_output_is_the_gate_weighted_sum_of_each_tokens_top2_experts():
    _, layer = tiny_moe_layer(capacity_factor=8.0)  # room for every token: nothing dropped
    x = torch.randn(2, 7, 16)
    y, _ = layer(x)
    tokens = x.reshape(-1, 16)
    probs = torch.softmax(layer.router(tokens), dim=-1)
    want = []
    for t, p in zip(tokens, probs):
        top_p, top_e = p.topk(2)
        gates = top_p / top_p.sum()
        want.append(sum(g * expert(layer, int(e), t) for g, e in zip(gates, top_e)))
    assert torch.allclose(y.reshape(-1, 16), torch.stack(want), atol=1e-5)
    assert int(layer.last_stats[2]) == 0


def test_moe_drops_choices_beyond_capacity_and_counts_them():
    _, layer = tiny_moe_layer(capacity_factor=1.0)
    with torch.no_grad():  # a collapsed router: every token prefers expert 3, then expert 5
        layer.router.weight.zero_()
        layer.router.weight[3] = 1.0
        layer.router.weight[5] = 0.5
    x = torch.rand(1, 16, 16) + 0.1  # positive inputs, so the preference holds for every token
    y, balance = layer(x)
    N, cap = 16, math.ceil(1.0 * 16 * 2 / 8)   # 4 slots per expert
    counts, _, dropped = layer.last_stats
    assert counts.tolist() == [0, 0, 0, N, 0, N, 0, 0]
    assert int(dropped) == 2 * (N - cap)
    # the first `cap` tokens got both experts; every later token was dropped by both and outputs 0
    assert (y[0, cap:] == 0).all() and (y[0, :cap].abs().sum(-1) > 0).all()
    assert balance.item() > 3.0  # collapsed routing: E · Σ f·P far above the balanced 1.0


def run_cpu_profile_moe(steps: int, window: int):
    """Train the CPU profile's model (batch 16, for speed) with the loop's schedule; report every window."""
    cfg = config.load("moe", ["train.batch_size=16"], profile="cpu")
    task = load_task(cfg, torch.device("cpu"))
    torch.manual_seed(cfg["train"]["seed"])
    model = task.build_model()
    opt = task.configure_optimizer(model)
    reports = []
    for step in range(1, steps + 1):
        for g in opt.param_groups:
            g["lr"] = lr_at(step - 1, cfg["train"])
        loss = task.loss(model, task.get_batch("train", step))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg["train"]["grad_clip"])
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step % window == 0:
            reports.append(model.eval_fields()["experts"])
    return cfg, reports


@pytest.mark.slow
def test_balance_loss_falls_and_no_expert_starves_after_warmup_on_the_cpu_profile():
    cfg, reports = run_cpu_profile_moe(steps=40, window=10)
    first, last = reports[0], reports[-1]
    # the eval event's `experts` field
    assert set(first) == {"counts", "balance_loss", "dropped", "per_layer"}
    assert len(first["counts"]) == cfg["model"]["n_expert"] == 8
    n_moe_layers = cfg["model"]["n_layer"] // 2
    tokens_per_window = 10 * 16 * cfg["model"]["block_size"]
    assert sum(first["counts"]) == tokens_per_window * 2 * n_moe_layers  # every token-choice counted once
    # the balance loss falls from its start and the router drops fewer tokens
    assert last["balance_loss"] < first["balance_loss"] - 0.1, [r["balance_loss"] for r in reports]
    assert last["dropped"] < first["dropped"], [r["dropped"] for r in reports]
    # after the warm-up (20 steps), every expert of every MoE layer receives tokens
    assert cfg["train"]["warmup_steps"] <= 20
    for r in reports[2:]:
        for layer_counts in r["per_layer"]:
            assert min(layer_counts) > 0, r["per_layer"]
