"""Internals (issue 24): the `internals` event is produced by short real CPU runs of every architecture, and what
it shows is right, checked against the model the run's checkpoint holds; the protocol bounds it against hostile
logs; the reducer keeps the recent probes; the internals view and `cockpit --replay` draw them."""
from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from rich.cells import cell_len

from common import events as E
from common.state import MAX_INTERNALS, RunState
from tests.conftest import ROOT, cockpit, events_of, train_in_process

FIXTURES = ROOT / "tests" / "fixtures" / "tui"
QUICK = ("profile=cpu", "train.max_steps=2", "train.batch_size=4", "train.warmup_steps=1", "train.log_interval=1",
         "train.eval_interval=1000", "train.eval_iters=1", "train.sample_interval=0", "train.sample_tokens=4",
         "train.memory_interval=0", "train.checkpoint_interval=0", "train.system_interval=60",
         "train.internals_interval=2")
LM_TINY = ("model.n_layer=2", "model.n_embd=32", "model.block_size=16")
RUNS = {  # preset: the tiny model it trains here
    "nanogpt": (*LM_TINY, "model.n_head=2"),
    "mingpt-sort": ("model.n_layer=2", "model.n_head=2", "model.n_embd=16"),
    "moe": (*LM_TINY, "model.n_head=2", "model.n_expert=4"),
    "mamba": (*LM_TINY, "model.d_state=4"),
    "rwkv": (*LM_TINY, "model.head_size=16", "model.mix_lora=4", "model.decay_lora=4", "model.wkv_chunk=8"),
    "retnet": (*LM_TINY, "model.n_head=2", "model.chunk_size=8"),
    "bitnet": (*LM_TINY, "model.n_head=2"),
    "llama": (*LM_TINY, "model.n_head=4", "model.n_kv_head=2"),
    "speedrun": (*LM_TINY, "model.n_layer=4", "model.n_head=2", "model.value_embeds=1"),
    "lora": (*LM_TINY, "model.n_head=2", "finetune.rank=4"),
    "dit": ("model.n_layer=1", "model.n_embd=32", "model.n_head=2", "sample.rows=1", "sample.steps=2",
            "sample.eval_samples=0"),
    "unet": ("model.base_channels=8", "sample.rows=1", "sample.steps=2", "sample.eval_samples=0"),
    "pixart": ("model.n_layer=1", "model.n_embd=32", "model.n_head=2", "model.text_layers=1", "model.text_embd=16",
               "sample.rows=1", "sample.steps=2", "sample.eval_samples=0"),
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Each preset's tiny run, once: {preset: (the run's events, its model with the final weights, its task)}."""
    cache: dict = {}

    def get(preset: str):
        if preset not in cache:
            from trainers import checkpoint
            from trainers.tasks import load_task

            log = tmp_path_factory.mktemp(preset) / "events.jsonl"
            assert train_in_process(preset, *QUICK, *RUNS[preset], log=log) == 0
            ckpt = checkpoint.load(log.parent / "ckpt.pt")
            task = load_task(ckpt["config"], torch.device("cpu"))
            model = task.build_model()
            model.load_state_dict(ckpt["model"])
            cache[preset] = (events_of(log, "internals"), model.eval(), task)
        return cache[preset]
    return get


def arr(ev: dict, name: str) -> torch.Tensor:
    a = next(a for a in ev["arrays"] if a["name"] == name)
    return torch.tensor([float(x) for x in a["data"]], dtype=torch.float64).view(a["shape"])  # "nan" too


# --- every trainable model: gradients and updates ---------------------------------------------------------------

@pytest.mark.parametrize("preset", list(RUNS))
def test_every_architecture_writes_internals_at_the_first_step_and_each_interval(preset, runs):
    evs, _, _ = runs(preset)
    assert [e["step"] for e in evs] == [1, 2]
    last = evs[-1]
    assert E.convert(last).__class__ is E.Internals
    assert last["arch"] == model_arch(preset)
    grad = arr(last, "grad_norm")
    assert (grad >= 0).all() and grad.sum() > 0
    from trainers.internals import RATIO_FLOOR

    ratios = arr(last, "update_ratio")
    assert torch.isfinite(ratios).all() and (ratios < 1).all() and (ratios >= RATIO_FLOOR - 1e-3).all()
    assert len(json.dumps(last)) < 120_000  # a few tens of KiB at most


def model_arch(preset: str) -> str:
    from trainers import config

    return config.load(preset, ["profile=cpu"])["arch"]


def test_update_ratios_and_gradient_norms_match_a_hand_computation_on_a_tiny_model():
    """AdamW's first step, by hand: m̂ = g, v̂ = g², so W' = W (1 - lr·wd) - lr · g / (|g| + eps)."""
    from trainers.internals import UpdateWatch

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    lr, wd, eps = 0.01, 0.1, 1e-8
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=wd, eps=eps)
    model(torch.randn(5, 3)).pow(2).sum().backward()
    by_hand = {}
    for name, p in model.named_parameters():
        g, w = p.grad.detach(), p.detach().clone()
        delta = -lr * wd * w - lr * g / (g.abs() + eps)
        by_hand[name] = math.log10(float(delta.norm()) / float(w.norm()))
    grads = {layer: math.sqrt(sum(float(p.grad.norm()) ** 2 for n, p in model.named_parameters()
                                  if n.startswith(layer + "."))) for layer in ("0", "1")}
    watch = UpdateWatch(model)
    opt.step()
    grad, ratio = watch.arrays()
    assert ratio["labels"] == list(by_hand)
    assert ratio["data"] == pytest.approx(list(by_hand.values()), abs=2e-3)
    assert grad["labels"] == ["0", "1"] and grad["data"] == pytest.approx([grads["0"], grads["1"]], rel=1e-5)


def test_parameters_are_grouped_into_their_layers():
    from trainers.internals import layer_of

    assert layer_of("transformer.h.3.attn.c_attn.weight") == "h.3"
    assert layer_of("transformer.wte.weight") == "wte"
    assert layer_of("lm_head.weight") == "lm_head"
    assert layer_of("net.blocks.0.attn.qkv.weight") == "blocks.0"


# --- GPT family: attention maps and the logit lens ----------------------------------------------------------------

@pytest.mark.parametrize("preset", ["nanogpt", "mingpt-sort", "moe", "bitnet", "lora", "llama", "speedrun"])
def test_attention_rows_sum_to_one_and_are_zero_above_the_diagonal(preset, runs):
    evs, _, task = runs(preset)
    att = arr(evs[-1], "attention")                          # (layer, head, query, key)
    L, H, T, _ = att.shape
    assert T == len(evs[-1]["tokens"]) == task.probe().size(1)
    assert att.sum(-1) == pytest.approx(torch.ones(L, H, T, dtype=torch.float64), abs=2e-3)
    assert (att.triu(1) == 0).all() and (att >= 0).all()


@pytest.mark.parametrize("preset", ["nanogpt", "mingpt-sort", "moe", "bitnet", "llama", "speedrun"])
def test_the_logit_lens_last_layer_is_the_models_own_next_token(preset, runs):
    evs, model, task = runs(preset)
    lens = next(a for a in evs[-1]["arrays"] if a["name"] == "logit_lens")
    _, P = lens["shape"]
    with torch.no_grad():
        logits, _ = model(task.probe(), torch.zeros_like(task.probe()))
    top = logits[0, -P:].argmax(-1).tolist()
    from trainers.internals import token_label

    decoded = task.decode_each(top) if hasattr(task, "decode_each") else [str(i) for i in top]
    assert lens["cells"][-P:] == [token_label(t) for t in decoded]
    assert all(0 < p <= 1 for p in lens["data"])


def test_the_sort_probe_is_a_fixed_unsorted_held_out_list_and_its_answer(runs):
    evs, _, task = runs("mingpt-sort")
    tokens = evs[0]["tokens"]
    assert tokens == evs[-1]["tokens"] and len(tokens) == 2 * task.length - 1
    digits = [int(t) for t in tokens[:task.length]]
    assert digits != sorted(digits) and tuple(digits) in set(map(tuple, task.test_inputs.tolist()))
    assert [int(t) for t in tokens[task.length:]] == sorted(digits)[:-1]


# --- MoE, Mamba, RWKV, RetNet, BitNet, diffusion ------------------------------------------------------------------

def test_moe_assignments_agree_with_the_routing_of_its_forward(runs):
    evs, model, task = runs("moe")
    ev = evs[-1]
    load, first, entropy = arr(ev, "expert_load"), arr(ev, "expert"), arr(ev, "router_entropy")
    T, k, E_ = task.probe().size(1), model.config.top_k, model.config.n_expert
    with torch.no_grad():
        model(task.probe())                                  # eval: nothing dropped
    routed = torch.stack([layer.last_stats[0] for layer in model.moe_layers]).double()
    assert torch.equal(load, routed)                         # the expert counts of the forward, per layer
    assert (load.sum(-1) == T * k).all()
    for layer in range(len(model.moe_layers)):              # every first choice is an expert that got tokens
        assert all(load[layer, int(e)] > 0 for e in first[layer])
    assert ((entropy >= 0) & (entropy <= math.log(E_) + 1e-3)).all()


def test_mamba_step_sizes_are_positive_and_keep_part_of_the_state(runs):
    evs, model, task = runs("mamba")
    delta, kept = arr(evs[-1], "delta"), arr(evs[-1], "exp_delta_A")
    assert delta.shape == (model.config.n_layer, task.probe().size(1))
    assert (delta > 0).all()
    assert ((kept > 0) & (kept <= 1)).all()


def test_rwkv_decays_lie_strictly_between_zero_and_one(runs):
    evs, model, _ = runs("rwkv")
    decay = arr(evs[-1], "decay")                          # (layer, head, quantile)
    assert decay.shape == (model.config.n_layer, model.config.n_embd // model.config.head_size, 5)
    assert ((decay > 0) & (decay < 1)).all()
    assert (decay.diff(dim=-1) >= 0).all()                   # quantiles in order


def test_retnet_maps_are_the_scores_times_the_decay_mask_and_give_its_retention(runs):
    from kernels.retention import retention_parallel

    evs, model, task = runs("retnet")
    maps = arr(evs[-1], "retention")
    gammas = arr(evs[-1], "gamma")
    inputs = []
    hooks = [b.msr.register_forward_pre_hook(lambda m, a: inputs.append(a[0])) for b in model.blocks]
    with torch.no_grad():
        model(task.probe(), form="parallel")
    for h in hooks:
        h.remove()
    T = task.probe().size(1)
    n = torch.arange(T, dtype=torch.float64)
    for layer, (block, x) in enumerate(zip(model.blocks, inputs)):
        with torch.no_grad():
            q, k, v = block.msr.qkv(x, torch.arange(T))
        scores = (q @ k.transpose(-2, -1))[0].double()                   # (H, T, T)
        for h, gamma in enumerate(gammas.tolist()):
            mask = torch.where(n[:, None] >= n[None, :], gamma ** (n[:, None] - n[None, :]), 0.0)
            assert maps[layer, h] == pytest.approx(scores[h] * mask, abs=2e-3)
        y = retention_parallel(q.float(), k.float(), v.float(), block.msr.gamma)[0]
        assert maps[layer].float() @ v[0].float() == pytest.approx(y, abs=0.05 * float(y.abs().max()) + 1e-4)


def test_bitnet_weight_histogram_covers_every_weight_and_flips_are_shares(runs):
    evs, _, _ = runs("bitnet")
    first, last = evs[0], evs[-1]
    hist = next(a for a in last["arrays"] if a["name"] == "w_over_gamma")
    assert sum(hist["data"]) == pytest.approx(1.0, abs=1e-3) and hist["lo"] == -hist["hi"]
    assert "flip_share" not in {a["name"] for a in first["arrays"]}  # nothing to compare with at the first probe
    flips = arr(last, "flip_share")
    assert ((flips >= 0) & (flips <= 1)).all() and flips.sum() > 0


def test_lora_delta_w_has_rank_at_most_r_and_its_spectrum_is_the_adapters(runs):
    import re

    from trainers.lora import LoRALinear

    evs, model, _ = runs("lora")
    sv = next(a for a in evs[-1]["arrays"] if a["name"] == "lora_sv")
    overlap = arr(evs[-1], "lora_overlap")
    adapted = {n: m for n, m in model.named_modules() if isinstance(m, LoRALinear)}
    L, K = sv["shape"]
    assert L == len(adapted) and ((overlap >= 0) & (overlap <= 1)).all()
    for i, label in enumerate(sv["labels"]):
        name, rank = re.fullmatch(r"(.+) \(rank (\d+)\)", label).groups()
        values = torch.tensor(sv["data"][i * K:(i + 1) * K])
        assert int(rank) == adapted[name].stacked_A().size(0) < K
        assert values[0] > 0 and (values[int(rank):] <= 1e-4 * values[0]).all()    # rank(B·A) <= r
        with torch.no_grad():
            expected = torch.linalg.svdvals(adapted[name].delta_weight())[:K]
        assert values == pytest.approx(expected, rel=1e-3, abs=1e-6 * float(values[0]))


@pytest.mark.parametrize("preset", ["dit", "unet"])
def test_diffusion_loss_by_timestep_bucket(preset, runs):
    evs, model, task = runs(preset)
    loss = next(a for a in evs[-1]["arrays"] if a["name"] == "loss_by_t")
    assert loss["shape"] == [task.PROBE_BUCKETS] and (loss["lo"], loss["hi"]) == (0, task.diffusion.T)
    assert all(0 < x < 10 for x in loss["data"])
    g = task.generator("probe", 0)                                       # the probe, drawn again
    x0, y, _, noise = task._draw("val", g, task.PROBE_IMAGES, drop_labels=False)
    T, n = task.diffusion.T, task.PROBE_BUCKETS
    for b in (0, n // 2, n - 1):                                          # each bucket: the loss at its middle t
        t = torch.full((len(x0),), int((b + 0.5) * T / n))
        with torch.no_grad():
            assert loss["data"][b] == pytest.approx(task.diffusion.loss(model.net, x0, t, noise, y).item(),
                                                    rel=1e-3, abs=1e-5)


@pytest.mark.parametrize("preset", ["dit", "unet", "pixart"])
def test_diffusion_x0_trajectory_runs_from_noise_to_the_sample_the_ema_weights_draw(preset, runs):
    """The denoising strip: x̂0 at evenly spaced steps of one DDIM run, the first at the noisiest t and the last at
    t = 0, where x̂0 is the sample itself (drawn again here from the same noise)."""
    evs, model, task = runs(preset)
    a = next(a for a in evs[-1]["arrays"] if a["name"] == "x0_trajectory")
    C, S = task.data.channels, task.data.size
    frames = min(task.TRAJECTORY_FRAMES, len(task.diffusion.ddim_timesteps(int(task.opts["steps"]))))
    assert frames >= 2 and a["shape"] == [frames, C, S, S] and a["dims"] == ["frame", "channel", "row", "column"]
    assert a["labels"][0] == f"t={task.diffusion.T - 1}" and a["labels"][-1] == "t=0"
    assert all(-1 <= x <= 1 for x in a["data"])
    o = task.opts
    with torch.no_grad():
        cond = task.conditions(task.prompts[:1]) if task.text else torch.zeros(1, dtype=torch.long)
        sample = task.diffusion.ddim_sample(model.ema_net, cond, (C, S, S),
                                            generator=torch.Generator().manual_seed(task.cfg["train"]["seed"] + 2),
                                            null_class=task.null_class, steps=int(o["steps"]), eta=float(o["eta"]),
                                            guidance=float(o["guidance"]))
    last = torch.tensor(a["data"]).view(a["shape"])[-1]
    assert torch.allclose(last, sample[0], atol=2e-3)


def test_attention_maps_too_large_for_an_event_are_pooled_keeping_rows_and_causality():
    from trainers.internals import MAP_BUDGET, causal_attention, fitted_maps

    q, k = torch.randn(12, 12, 32, 8), torch.randn(12, 12, 32, 8)   # gpt2-124m: 144 maps of 32 x 32
    maps = fitted_maps(causal_attention(q, k))
    assert maps.numel() <= MAP_BUDGET and maps.shape[-1] == 10
    assert maps.sum(-1) == pytest.approx(torch.ones(12, 12, 10), abs=1e-5)
    assert (maps.triu(1) == 0).all()


def test_internals_interval_zero_turns_them_off(tmp_path):
    log = tmp_path / "run" / "events.jsonl"
    assert train_in_process("nanogpt", *QUICK, *RUNS["nanogpt"], "train.internals_interval=0", log=log) == 0
    assert events_of(log, "internals") == [] and events_of(log, "run_end")[-1]["status"] == "completed"


# --- protocol and reducer -----------------------------------------------------------------------------------

def internals(step: int, **over) -> dict:
    ev = {"type": "internals", "v": 1, "time": 1.0, "step": step, "arch": "gpt", "tokens": ["a", "b"],
          "arrays": [{"name": "attention", "shape": [1, 1, 2, 2], "data": [1, 0, 0.5, 0.5],
                      "dims": ["layer", "head", "query", "key"]}]}
    ev.update(over)
    return ev


BAD = {
    "data longer than its shape": {"arrays": [{"name": "a", "shape": [2], "data": [1, 2, 3]}]},
    "more numbers than an event may hold": {"arrays": [{"name": "a", "shape": [70_000], "data": [0] * 70_000}]},
    "many arrays adding up to too many": {"arrays": [{"name": f"a{i}", "shape": [2000], "data": [0] * 2000}
                                                     for i in range(40)]},
    "five axes": {"arrays": [{"name": "a", "shape": [1, 1, 1, 1, 1], "data": [0]}]},
    "a shape of 0": {"arrays": [{"name": "a", "shape": [0], "data": []}]},
    "labels that do not match": {"arrays": [{"name": "a", "shape": [2], "data": [1, 2], "labels": ["x"]}]},
    "cells that do not match": {"arrays": [{"name": "a", "shape": [2], "data": [1, 2], "cells": ["x"]}]},
    "axes that do not match": {"arrays": [{"name": "a", "shape": [2], "data": [1, 2], "dims": ["x", "y"]}]},
    "data that is text": {"arrays": [{"name": "a", "shape": [1], "data": ["x"]}]},
    "a token with an escape": {"tokens": ["\x1b[2J"]},
    "no arrays": {"arrays": None},
    "too many arrays": {"arrays": [{"name": "a", "shape": [1], "data": [0]}] * 65},
}


@pytest.mark.parametrize("case", BAD)
def test_a_huge_or_malformed_internals_event_is_counted_and_skipped(case, tmp_path):
    ev = internals(3, **BAD[case])
    assert isinstance(E.convert(dict(ev)), E.Invalid)
    log = tmp_path / "events.jsonl"
    log.write_text("".join(json.dumps(e) + "\n" for e in (internals(1), ev, internals(2))))
    from common.state import load_state

    s = load_state(log)
    assert s.bad_events == 1 and [p.step for p in s.internals] == [1, 2]
    r = cockpit("--replay", str(log), "--color", "never")
    assert r.returncode == 0 and "Traceback" not in r.stderr
    assert "ignored 1 events with missing or mistyped fields" in r.stdout


def test_non_finite_values_travel_and_come_back():
    line = E.encode("internals", {"step": 1, "arrays": [{"name": "update_ratio", "shape": [2],
                                                         "data": [float("nan"), -math.inf]}]}, 1.0)
    ev = E.decode(line[:-1])
    assert math.isnan(ev.arrays[0]["data"][0]) and ev.arrays[0]["data"][1] == -math.inf


def test_the_reducer_keeps_the_newest_probes_and_a_resume_drops_the_later_ones():
    s = RunState().apply_all([internals(i) for i in range(1, MAX_INTERNALS + 11)])
    assert len(s.internals) == MAX_INTERNALS and s.internals[-1].step == MAX_INTERNALS + 10
    s.apply({"type": "run_start", "resumed_from": 30})
    assert s.internals[-1].step == 30
    s.apply(internals(20))                                   # a step probed again replaces the later probes
    assert s.internals[-1].step == 20 and all(p.step < 20 for p in list(s.internals)[:-1])


# --- the cockpit: the internals view and the replay ----------------------------------------------------------

def test_replay_prints_the_most_recent_probe_as_text_heatmaps():
    r = cockpit("--replay", str(FIXTURES / "mingpt-sort-internals" / "events.jsonl"), "--color", "never")
    assert r.returncode == 0 and "Traceback" not in r.stderr
    out = r.stdout
    assert "internals at step 600 · arch mingpt" in out and "11 probes recorded" in out
    for title in ("── attention", "── logit lens", "── gradients & updates"):
        assert title in out
    assert out.count("L2 H") == 3                           # a small multiple per head of the last layer
    maps = out.split("── attention", 1)[1].split("── logit lens", 1)[0].splitlines()
    assert any(line.startswith("0 @@") for line in maps)    # the first token can only read itself: weight 1
    assert "0 0 0 1 0 2 0 0 0 0 1" in out                   # the probe's tokens on the key axis


def test_replay_in_colour_draws_half_block_heatmaps():
    r = cockpit("--replay", str(FIXTURES / "mamba-internals" / "events.jsonl"), "--color", "always")
    assert r.returncode == 0
    assert "── selectivity" in r.stdout and "\x1b[" in r.stdout and "Δ_t per probe token" in r.stdout


def test_every_view_draws_each_architectures_event_without_colour_and_in_colour(runs):
    from cockpit.internals import draw_view, views_of

    for preset in RUNS:
        evs, _, _ = runs(preset)
        ev = E.convert(evs[-1])
        titles = [v.title for v in views_of(ev)]
        assert len(titles) >= 2 and titles[-1] == "gradients & updates", (preset, titles)
        for view in views_of(ev):
            for color in (False, True):
                lines = draw_view(view, ev, 100, color)
                assert lines and not any("cannot draw" in line.plain for line in lines), (preset, view.title)
            for width in (60, 80, 100, 118, 200):   # a drawn line never wider than the pane: wrapped, it breaks the picture
                wide = [line.plain for c in (False, True) for line in draw_view(view, ev, width, c)
                        if max(map(cell_len, line.plain.split("\n"))) > width and line.spans]  # (prose may wrap)
                assert not wide, (preset, view.title, width, wide[:2])


def test_accepted_hostile_values_draw_in_every_view():
    """Values the protocol lets through (NaN, ±inf, 1e308, empty labels, one-entry axes) draw as text."""
    from cockpit.internals import VIEWS, draw_view

    weird = [math.nan, math.inf, -math.inf, 1e308, -1e308, 0.0, 5e-324]
    arrays = []
    for view in VIEWS:
        for name in view.arrays:
            shape = {"attention": [1, 1, 2, 2], "retention": [1, 1, 2, 2], "logit_lens": [1, 4], "expert": [1, 7],
                     "router_entropy": [1, 7], "expert_load": [1, 7], "delta": [1, 7], "exp_delta_A": [1, 7],
                     "A": [1, 7], "decay": [1, 1, 5], "token_shift": [1, 5]}.get(name, [7])
            n = math.prod(shape)
            arrays.append({"name": name, "shape": shape, "data": (weird * n)[:n], "labels": [""] * shape[0],
                           "cells": [""] * n, "lo": -1e308, "hi": 1e308})
    ev = E.convert({"type": "internals", "step": 1, "arrays": arrays, "tokens": [""] * 7})
    assert isinstance(ev, E.Internals)
    for view in VIEWS:
        for color in (False, True):
            assert draw_view(view, ev, 40, color)


async def internals_screen(app, pilot):
    """The internals view, opened with `i` once the watched run's screen has loaded."""
    from cockpit.screens.internals import InternalsScreen
    from cockpit.screens.run import RunScreen

    for _ in range(200):
        if isinstance(app.screen, RunScreen) and app.screen.loaded:
            break
        await pilot.pause(0.05)
    await pilot.press("i")
    await pilot.pause(0.2)
    assert isinstance(app.screen, InternalsScreen)
    return app.screen


async def test_the_internals_screen_steps_through_probes_and_views_and_goes_back():
    from cockpit.app import CockpitApp
    from cockpit.screens.run import RunScreen

    app = CockpitApp(watch=str(FIXTURES / "mingpt-sort-internals" / "events.jsonl"))
    async with app.run_test(size=(120, 48)) as pilot:
        screen = await internals_screen(app, pilot)

        def head() -> str:
            return str(screen.query_one("#internals-head").render())

        def body() -> str:
            return str(screen.query_one("#internals-view").render())
        assert "probe 11/11" in head() and "step 600" in head() and "L2 H2" in body()
        await pilot.press("left_square_bracket", "left_square_bracket")
        await pilot.pause(0.1)
        assert "probe 9/11" in head() and "step 480" in head()
        await pilot.press("right")
        await pilot.pause(0.1)
        assert "read at" in body()                         # the logit lens
        assert "what each layer would predict" in str(screen.query_one("#internals-caption").render())
        await pilot.press("right_square_bracket", "right_square_bracket", "right_square_bracket")
        await pilot.pause(0.1)
        assert "probe 11/11" in head() and "read at" in body()   # the view is kept while stepping
        run_screen = app.screen_stack[-2]
        newest = E.convert({**E.as_dict(run_screen.state.internals[-1]), "step": 660})
        run_screen.state.apply(newest)                      # a live run's next probe arrives
        await pilot.pause(1.5)
        assert "probe 12/12" in head() and "step 660" in head()   # followed, since the newest was shown
        await pilot.press("escape")
        await pilot.pause(0.1)
        assert isinstance(app.screen, RunScreen)


# --- RWKV's state and token shift, MoE's drops and load over time, BitNet's activation outliers ------------------

def no_colour(lines) -> list[str]:
    return [line.plain for line in lines]


def test_rwkv_state_norm_is_the_wkv_recurrence_by_hand_and_the_token_shift_its_mixing():
    """‖S_t‖ of layer 1 by hand: S_t = diag(w_t) S_t-1 + k_tᵀ v_t per head, in float64, from the layer's own
    projections of its input (layer 0's output)."""
    from cockpit.internals import VIEWS, draw_view
    from trainers.models.rwkv import Config, Model, token_shift

    torch.manual_seed(0)
    cfg = Config(n_layer=2, n_embd=32, head_size=16, mix_lora=4, decay_lora=4, block_size=16)
    model = Model(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():             # off the initialisation (zero LoRAs, zero outputs)
            p.add_(0.1 * torch.randn_like(p))
    idx = torch.randint(0, cfg.vocab_size, (1, 12))
    ev = E.convert({"type": "internals", "step": 1, "tokens": [str(i) for i in range(12)],
                    "arrays": model.internals(idx, lambda ids: [str(i) for i in ids])})
    norm = torch.tensor(ev.array("state_norm")["data"]).view(ev.array("state_norm")["shape"])
    assert norm.shape == (2, 12) and torch.isfinite(norm).all() and (norm >= 0).all()

    H, K = cfg.n_embd // cfg.head_size, cfg.head_size
    block = model.blocks[1]
    with torch.no_grad():
        h = block.ln1(model.blocks[0](model.ln0(model.wte(idx))))
        _, k, v, _, log_w = (t[0].double() for t in block.att.project(h, token_shift(h)))
        S, by_hand = torch.zeros(H, K, K, dtype=torch.float64), []
        for t in range(12):
            kh, vh, wh = k[t].view(H, K), v[t].view(H, K), log_w[t].exp().view(H, K)
            S = wh.unsqueeze(-1) * S + kh.unsqueeze(-1) * vh.unsqueeze(-2)
            by_hand.append(float(S.pow(2).sum().sqrt()))
        mix = block.att.ddlerp_mix(h, token_shift(h) - h)[:, 0].mean(-1)            # (5, T)
    assert norm[1].tolist() == pytest.approx(by_hand, rel=1e-4)
    shift = ev.array("token_shift")
    assert shift["shape"] == [2, 7] and shift["cells"][:7] == ["att w", "att k", "att v", "att r", "att g",
                                                                "ffn k", "ffn r"]
    assert shift["data"][7 + 5] == pytest.approx(float(block.ffn.maa_k.detach().mean()), abs=1e-3)
    dd = torch.tensor(ev.array("token_shift_dd")["data"]).view(2, 5, 12)
    assert dd[1] == pytest.approx(mix, abs=1e-3) and dd[1].std() > 0    # ddlerp moves μ token by token

    state = next(v for v in VIEWS if v.title == "state")
    drawn = "\n".join(no_colour(draw_view(state, ev, 100, False)))
    assert f"{min(by_hand):.3g} … {max(by_hand):.3g}" in drawn          # layer 1's range, on its row
    assert state.caption.count("\n") == 0 and "state" in state.caption


def test_moe_dropped_tokens_are_the_choices_past_each_experts_capacity():
    """By hand: each expert takes at most C = ceil(capacity_factor · T · k / E) of the probe's token-choices;
    the rest of its choices are dropped, whatever their order. The same count as a training forward drops."""
    from cockpit.internals import VIEWS, draw_view
    from trainers.models.moe import Config, Model

    torch.manual_seed(1)
    cfg = Config(n_layer=4, n_head=2, n_embd=32, block_size=16, n_expert=4, top_k=2, capacity_factor=0.75)
    model = Model(cfg).eval()
    idx = torch.randint(0, cfg.vocab_size, (1, 16))
    inputs = []
    hooks = [m.register_forward_pre_hook(lambda m, a: inputs.append(a[0][0])) for m in model.moe_layers]
    arrays = model.internals(idx, lambda ids: [str(i) for i in ids])
    for h in hooks:
        h.remove()
    dropped = next(a for a in arrays if a["name"] == "dropped")
    cap = math.ceil(cfg.capacity_factor * 16 * cfg.top_k / cfg.n_expert)
    by_hand = []
    for moe, x in zip(model.moe_layers, inputs):
        top_e = F.softmax(moe.router_logits(x), dim=-1).topk(cfg.top_k, dim=-1).indices
        per_expert = torch.bincount(top_e.reshape(-1), minlength=cfg.n_expert)
        by_hand.append(sum(max(int(n) - cap, 0) for n in per_expert))
    assert dropped["data"] == by_hand and sum(by_hand) > 0 and dropped["labels"] == ["layer 1", "layer 3"]
    model.train()
    with torch.no_grad():
        model(idx)
    assert [int(m.last_stats[2]) for m in model.moe_layers] == by_hand

    ev = E.convert({"type": "internals", "step": 1, "arrays": arrays})
    view = next(v for v in VIEWS if v.title == "dropped tokens")
    drawn = no_colour(draw_view(view, ev, 80, False))
    for label, n in zip(dropped["labels"], by_hand):
        assert any(line.strip().startswith(label) and line.endswith(f" {n}") for line in drawn), drawn
    assert drawn[-1] == f"of {16 * cfg.top_k}, {16 * cfg.top_k} token-choices routed per layer"


def load_probe(step: int, loads: list[list[int]]) -> dict:
    return {"type": "internals", "step": step, "arrays": [
        {"name": "expert_load", "shape": [len(loads), len(loads[0])], "data": [x for row in loads for x in row],
         "dims": ["layer", "expert"], "labels": [f"layer {2 * i + 1}" for i in range(len(loads))]}]}


def test_expert_load_over_probes_is_each_experts_share_probe_by_probe():
    from cockpit.internals import draw_view, views_of

    probes = [E.convert(load_probe(s, [[4, 0]])) for s in (10, 20)] + [E.convert(load_probe(30, [[0, 4]]))]
    probes.insert(2, E.convert(load_probe(25, [[2, 2]])))
    view = next(v for v in views_of(probes[-1]) if v.title == "expert load over probes")
    assert view.history
    lines = no_colour(draw_view(view, probes[-1], 80, False, probes))
    rows = {line[:11].strip(): line[11:] for line in lines if line.startswith("expert")}
    # shares 1, 1, ½, 0 for expert 0 (and the other way round for expert 1): the ramp's top, middle and blank
    assert rows == {"expert 0": "@@@@++  ", "expert 1": "    ++@@"}
    assert "step 10 … step 30" in "\n".join(lines) and "over 4 probes" in lines[0]
    older = no_colour(draw_view(view, probes[1], 80, False, probes[:2]))   # stepped back: the history up to it
    assert {line[:11].strip(): line[11:] for line in older if line.startswith("expert")} == {
        "expert 0": "@@@@", "expert 1": "    "}


async def test_the_internals_screen_draws_the_load_history_up_to_the_probe_shown(tmp_path):
    from cockpit.app import CockpitApp

    log = tmp_path / "events.jsonl"
    loads = ([[3, 1]], [[2, 2]], [[1, 3]])
    log.write_text("".join(json.dumps({**load_probe(10 * (i + 1), load), "v": 1, "time": 1.0 + i}) + "\n"
                           for i, load in enumerate(loads)))
    app = CockpitApp(watch=str(log))
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await internals_screen(app, pilot)
        for _ in range(4):                          # to the view of the history
            if screen.view_title == "expert load over probes":
                break
            await pilot.press("right")
            await pilot.pause(0.05)
        await pilot.pause(0.1)
        body = str(screen.query_one("#internals-view").render())
        assert "over 3 probes" in body and "step 10 … step 30" in body
        assert "watch it even out towards 1/E" in str(screen.query_one("#internals-caption").render())
        await pilot.press("left_square_bracket")
        await pilot.pause(0.1)
        body = str(screen.query_one("#internals-view").render())
        assert "over 2 probes" in body and "step 10 … step 20" in body


def test_bitnet_activation_outliers_name_a_planted_outlier_channel():
    from cockpit.internals import VIEWS, draw_view
    from trainers.models.bitnet import Config, Model

    torch.manual_seed(2)
    cfg = Config(n_layer=2, n_head=2, n_embd=32, block_size=16)
    model = Model(cfg).eval()
    with torch.no_grad():
        model.wte.weight[:, 13] = 3.0                # every token's channel 13: far above the others (~0.02)
    idx = torch.randint(0, cfg.vocab_size, (1, 12))
    ev = E.convert({"type": "internals", "step": 1, "arrays": model.internals(idx, lambda ids: [str(i) for i in ids])})
    out = ev.array("act_outliers")
    k = out["shape"][1]
    row = out["labels"].index("blocks.0.attn.c_attn")    # block 0's first BitLinear reads the embeddings
    assert out["cells"][row * k] == "13"
    with torch.no_grad():
        xn = F.rms_norm(model.wte(idx)[0], (cfg.n_embd,), eps=1e-5).abs()
    assert out["data"][row * k] == pytest.approx(float(xn[:, 13].max() / xn.median()), rel=1e-3)
    assert out["data"][row * k] > 10 * out["data"][row * k + 1]
    assert len(out["labels"]) == 4 * cfg.n_layer                     # c_attn, c_proj, w13, w2 of each block
    view = next(v for v in VIEWS if v.title == "activation outliers")
    drawn = no_colour(draw_view(view, ev, 120, False))
    assert any("blocks.0.attn.c_attn" in line and f"ch 13 ×{out['data'][row * k]:.3g}" in line for line in drawn)


# --- `cockpit --replay RUN --images DIR`: the heatmaps as PNG -------------------------------------------------

def test_replay_images_writes_each_heatmap_of_the_latest_probe_as_an_enlarged_png(tmp_path):
    from PIL import Image

    from cockpit.internals import SEQUENTIAL

    log = FIXTURES / "mingpt-sort-internals" / "events.jsonl"
    out = tmp_path / "pngs" / "here"
    r = cockpit("--replay", str(log), "--color", "never", "--images", str(out))
    assert r.returncode == 0, r.stderr
    last = events_of(log, "internals")[-1]
    maps = {a["name"]: a for a in last["arrays"] if len(a["shape"]) >= 2}
    L, H, T, S = maps["attention"]["shape"]
    expected = {f"internals-{last['step']}-attention-layer{l}-head{h}.png": (T, S)
                for l in range(L) for h in range(H)}
    expected[f"internals-{last['step']}-logit_lens.png"] = tuple(maps["logit_lens"]["shape"])
    assert sorted(p.name for p in out.iterdir()) == sorted(expected)
    for name, (rows, cols) in expected.items():
        factor = max(1, min(16, -(-256 // min(rows, cols))))             # to 256 pixels, at most 16 times
        img = Image.open(out / name)
        assert img.size == (cols * factor, rows * factor) and img.mode == "RGB"
    first = Image.open(out / f"internals-{last['step']}-attention-layer0-head0.png")
    factor = first.size[0] // S
    assert first.getpixel((0, 0)) == SEQUENTIAL[-1]                     # the first token reads itself: 1
    assert first.getpixel((S * factor - 1, 0)) == SEQUENTIAL[0]         # never a later token: 0
    assert f"saved {len(expected)} internals heatmaps of step {last['step']}" in r.stdout


def test_replay_images_keep_hostile_array_names_inside_the_directory_and_refuse_one_that_is_a_file(tmp_path):
    log = tmp_path / "run" / "events.jsonl"
    log.parent.mkdir()
    log.write_text(json.dumps(internals(7, arrays=[{"name": "../../escape/me", "shape": [2, 3], "data": [0] * 6,
                                                    "dims": ["../x", "y"]}])) + "\n")
    out = tmp_path / "out"
    r = cockpit("--replay", str(log), "--color", "never", "--images", str(out))
    assert r.returncode == 0, r.stderr
    assert [p.name for p in out.iterdir()] == ["internals-7-escape_me.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "run"]
    a_file = tmp_path / "run" / "events.jsonl"
    r = cockpit("--replay", str(log), "--images", str(a_file))
    assert r.returncode == 2 and r.stderr.startswith(f"cockpit: error: --images: cannot make the directory {a_file}")


def test_the_denoising_view_draws_the_frames_side_by_side_titled_by_timestep():
    from cockpit.internals import draw_view, views_of

    S, C, H, W = 5, 3, 8, 8
    data = [((s + c + r + x) % 7) / 3 - 1 for s in range(S) for c in range(C) for r in range(H) for x in range(W)]
    ev = E.Internals(step=3, arrays=[{"name": "x0_trajectory", "shape": [S, C, H, W], "data": data,
                                      "labels": [f"t={999 - 250 * s}" for s in range(S)]}])
    view = next(v for v in views_of(ev) if v.title == "denoising")
    lines = [line.plain for line in draw_view(view, ev, 60, False)]
    assert lines[1].split() == ["t=999", "t=749", "t=499", "t=249", "t=-1"][:len(lines[1].split())]
    assert len(lines) == 2 + H // 2 and all(len(line.rstrip()) <= 60 for line in lines[1:])   # 5 frames of 9 fit
    narrow = [line.plain for line in draw_view(view, ev, 20, False)]
    assert len(narrow) == 1 + 3 * (1 + H // 2)                   # 2 frames a row: three rows of frames


def test_llama_and_speedrun_attention_maps_are_the_weights_their_forward_applies():
    """The map the view draws, applied to the values, gives the attention output the model computes (GQA's
    shared key heads, rotary positions, QK-norm and a sliding window included)."""
    from trainers.models import build_model
    from trainers.models.llama import rope_cos_sin

    torch.manual_seed(0)
    x = torch.randn(1, 12, 32)
    llama = build_model("llama", dict(vocab_size=50, block_size=16, n_layer=1, n_head=4, n_kv_head=2, n_embd=32,
                                      qk_norm=True, sliding_window=5)).eval()
    attn = llama.transformer.h[0].attn
    cos, sin = rope_cos_sin(llama.config, 12, x.device)
    with torch.no_grad():
        weights = attn.attention_map(x, cos, sin)                                   # (1, 4, 12, 12)
        _, _, v = attn.qkv(x, cos, sin)
        y = weights @ v.repeat_interleave(2, dim=1).float()
        expected = attn(x, cos, sin)
    assert (weights.triu(1) == 0).all() and (weights.tril(-5) == 0).all()          # causal, 5-token window
    assert torch.allclose(attn.o_proj(y.transpose(1, 2).reshape(1, 12, 32)), expected, atol=1e-5)

    run = build_model("speedrun", dict(vocab_size=50, block_size=16, n_layer=2, n_head=2, n_embd=32, window=4,
                                       value_embeds=0)).eval()
    sa = run.transformer.h[0].attn
    with torch.no_grad():
        weights = sa.attention_map(x)
        _, _, v = sa.qkv(x)
        y = (weights @ v.float()).transpose(1, 2).reshape(1, 12, 32)
        expected = sa(x)
    assert (weights.tril(-4) == 0).all()
    assert torch.allclose(sa.c_proj(y), expected, atol=1e-5)


def test_the_cross_attention_view_is_a_patch_grid_per_caption_token(runs):
    """pixart's map (patch x token) drawn as one grid of the image's patches per token of the probe caption,
    titled with the token; every patch's weights over the tokens sum to 1."""
    from cockpit.internals import draw_view, views_of

    evs, _, _ = runs("pixart")
    ev = E.convert(evs[-1])
    cross = ev.array("cross_attention")
    P, K = cross["shape"]
    rows = torch.tensor(cross["data"], dtype=torch.float64).view(P, K).sum(1)
    assert torch.allclose(rows, torch.ones(P, dtype=torch.float64), atol=1e-3)
    view = next(v for v in views_of(ev) if v.title == "cross-attention")
    lines = [line.plain for line in draw_view(view, ev, 200, False)]
    titles = lines[1].split()
    assert titles[0] == "start" and titles[1:4] == ["'t'", "'h'", "'e'"]
    side = int(P ** 0.5)
    grid = draw_view(view, ev, 200, True)[2:2 + side // 2]      # in colour: half blocks, two patch rows a line
    assert all(len(line.spans) >= side for line in grid) and not any("'" in line.plain for line in grid)
