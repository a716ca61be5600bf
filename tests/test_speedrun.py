"""The speedrun preset: Muon's update is orthogonal, each model switch changes the module it names and nothing
else, every switch off is nanoGPT's model, the warmup-stable-decay schedule, and the preset trains (and resumes
exactly) through the real loop on its CPU profile."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from tests.conftest import events_of, train_in_process
from trainers import config, models
from trainers.loop import lr_at
from trainers.optim import Muon, MuonWithAdamW, muon_split, muon_with_adamw

SMALL = dict(n_layer=4, n_head=4, n_embd=32, block_size=16)
ALL_OFF = dict(rope=False, qk_norm=False, relu2=False, rmsnorm=False, untied_head=False, zero_init=False,
               value_embeds=0, skips=False, softcap=0.0, window=0)
TRAIN = dict(lr=1e-3, muon_lr=1.0, weight_decay=0.0, muon_momentum=0.0, beta1=0.9, beta2=0.99)


def speedrun(seed=0, **switches):
    torch.manual_seed(seed)
    return models.build_model("speedrun", {**SMALL, **ALL_OFF, **switches}, vocab_size=11)


# --- Muon -------------------------------------------------------------------------------------------------
class Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.wte = nn.Embedding(11, 32)
        self.hidden = nn.Linear(32, 96, bias=False)   # (96, 32): a tall matrix
        self.lm_head = nn.Linear(32, 11, bias=False)


def test_muon_update_of_a_hidden_matrix_is_orthogonal_within_the_newton_schulz_band():
    torch.manual_seed(0)
    toy = Toy()
    # a gradient with a spread of singular values (condition number 20): plain SGD's step is far from orthogonal
    u, _, v = torch.linalg.svd(torch.randn(96, 32), full_matrices=False)
    grad = u @ torch.diag(torch.linspace(1.0, 20.0, 32)) @ v
    sg = torch.linalg.svdvals(grad)
    assert sg.max() / sg.min() > 19
    for p in toy.parameters():
        p.grad = torch.zeros_like(p)
    toy.hidden.weight.grad = grad.clone()
    before = toy.hidden.weight.detach().clone()
    opt = muon_with_adamw(toy, TRAIN)
    opt.step()
    # lr 1, no momentum: the step is the orthogonalised gradient, scaled by sqrt(rows / cols) for a tall matrix
    update = (before - toy.hidden.weight.detach()) / (96 / 32) ** 0.5
    s = torch.linalg.svdvals(update)
    assert 0.6 <= s.min() and s.max() <= 1.25, s
    assert torch.allclose(update.T @ update, torch.eye(32), atol=0.4)


def test_muon_takes_the_hidden_matrices_and_adamw_the_embeddings_head_and_scalars():
    model = speedrun(rope=True, skips=True, value_embeds=1, untied_head=True)
    hidden, rest = muon_split(model)
    names = {id(p): n for n, p in model.named_parameters()}
    assert sorted(names[id(p)].split(".")[-2] for p in hidden) == sorted(["c_attn", "c_proj", "c_fc", "c_proj"] * 4)
    rest_names = {names[id(p)] for p in rest}
    assert {"transformer.wte.weight", "lm_head.weight", "value_embeds.0.weight", "skip_weights",
            "transformer.h.0.x0_lambdas"} <= rest_names
    opt = muon_with_adamw(model, {**TRAIN, "lr": 0.01, "muon_lr": 0.05})
    assert isinstance(opt.muon, Muon) and isinstance(opt.adamw, torch.optim.AdamW)
    for g in opt.param_groups:  # the loop's schedule step: Muon keeps its lr ratio to AdamW's
        g["lr"] = 0.5 * 0.01 * g.get("lr_scale", 1.0)
    assert opt.muon.param_groups[0]["lr"] == pytest.approx(0.025)
    assert all(g["lr"] == pytest.approx(0.005) for g in opt.adamw.param_groups)


def test_muon_steps_as_the_records_muon_and_as_torch_optim_muon():
    """The record's Muon.step restated (averaged momentum, Nesterov, zeropower_via_newtonschulz5), and
    torch.optim.Muon (summed momentum, bfloat16): the same updates, the latter within bfloat16 rounding."""
    torch.manual_seed(1)
    ours, builtin = Toy(), Toy()
    builtin.load_state_dict(ours.state_dict())
    opt = muon_with_adamw(ours, {**TRAIN, "muon_lr": 0.02, "muon_momentum": 0.95})
    torch_muon = torch.optim.Muon([builtin.hidden.weight], lr=0.02, weight_decay=0.0, momentum=0.95,
                                  nesterov=True, adjust_lr_fn="original")
    record = ours.hidden.weight.detach().clone()
    buf, mu = torch.zeros(96, 32), 0.95
    for _ in range(3):
        g = torch.randn(96, 32)
        for p in ours.parameters():
            p.grad = torch.zeros_like(p)
        ours.hidden.weight.grad, builtin.hidden.weight.grad = g.clone(), g.clone()
        opt.step()
        torch_muon.step()
        buf.lerp_(g, 1 - mu)
        nesterov = g.lerp(buf, mu)
        x = nesterov.T / (nesterov.norm() + 1e-7)
        for _ in range(5):
            a = x @ x.T
            x = 3.4445 * x + (-4.7750 * a + 2.0315 * a @ a) @ x
        record -= 0.02 * (96 / 32) ** 0.5 * x.T
        assert torch.allclose(ours.hidden.weight, record, atol=1e-6)
        assert torch.allclose(ours.hidden.weight, builtin.hidden.weight, atol=2e-3)


def test_muon_optimizer_state_round_trips_and_refuses_an_adamw_state():
    toy = Toy()
    for p in toy.parameters():
        p.grad = torch.randn_like(p)
    opt = muon_with_adamw(toy, TRAIN)
    opt.step()
    again = muon_with_adamw(toy, TRAIN)
    again.load_state_dict(opt.state_dict())
    assert len(again.state) == len(opt.state) == 3
    with pytest.raises(KeyError):
        again.load_state_dict(torch.optim.AdamW(toy.parameters()).state_dict())
    assert isinstance(again, MuonWithAdamW)


# --- each switch changes what it names, and only that ---------------------------------------------------
def tree(model: nn.Module) -> dict[str, str]:
    """Every module (its class) and parameter (its shape) by name; a tied head is the embedding."""
    out = {name or "<model>": type(m).__name__ for name, m in model.named_modules()}
    out.update({name: str(tuple(p.shape)) for name, p in model.named_parameters()})
    return out


def changed(a: dict, b: dict) -> set[str]:
    return {k for k in a.keys() | b.keys() if a.get(k) != b.get(k)}


BLOCKS = [f"transformer.h.{i}" for i in range(4)]
SWITCHES = {
    "rope": (True, {"transformer.wpe", "transformer.wpe.weight", *(f"{b}.attn.rotary" for b in BLOCKS)}),
    "qk_norm": (True, {f"{b}.attn.{n}" for b in BLOCKS for n in ("q_norm", "k_norm")}),
    "relu2": (True, {f"{b}.mlp.act" for b in BLOCKS}),
    "rmsnorm": (True, {"transformer.ln_0", "transformer.ln_f", "transformer.ln_f.weight",
                       *(f"{b}.{ln}{w}" for b in BLOCKS for ln in ("ln_1", "ln_2") for w in ("", ".weight"))}),
    "untied_head": (True, {"lm_head.weight"}),
    "value_embeds": (2, {"value_embeds", "value_embeds.0", "value_embeds.0.weight", "value_embeds.1",
                         "value_embeds.1.weight", *(f"transformer.h.{i}.attn.value_lambdas" for i in (0, 1, 2, 3))}),
    "skips": (True, {"skip_weights", *(f"{b}.x0_lambdas" for b in BLOCKS)}),
    "softcap": (15.0, {"lm_head"}),
}


@pytest.mark.parametrize("switch", sorted(SWITCHES))
def test_each_switch_changes_the_modules_it_names_and_nothing_else(switch):
    on, expected = SWITCHES[switch]
    off_model, on_model = speedrun(), speedrun(**{switch: on})
    assert changed(tree(off_model), tree(on_model)) == expected
    if switch == "untied_head":  # the same names: tied, the head's parameter is the embedding's
        assert off_model.lm_head.weight is off_model.transformer.wte.weight
        assert on_model.lm_head.weight is not on_model.transformer.wte.weight


def test_zero_init_zeroes_the_residual_projections_and_the_untied_head_and_no_other_weight():
    for untied in (False, True):
        off, on = speedrun(untied_head=untied), speedrun(untied_head=untied, zero_init=True)
        assert tree(off) == tree(on)
        zeroed = {n for n, p in on.named_parameters() if not torch.equal(p, dict(off.named_parameters())[n])}
        want = {f"{b}.{part}.c_proj.weight" for b in BLOCKS for part in ("attn", "mlp")}
        assert zeroed == (want | {"lm_head.weight"} if untied else want)
        assert all(not on.get_parameter(n).any() for n in zeroed)


def test_window_limits_how_far_back_a_token_sees_and_adds_nothing():
    assert tree(speedrun()) == tree(speedrun(window=4))
    model = speedrun(window=4, n_layer=2).eval()
    idx = torch.randint(0, 11, (1, 16))
    other = idx.clone()
    other[0, 0] = (idx[0, 0] + 1) % 11
    diff = (model(idx, idx)[0] - model(other, other)[0]).abs().amax(-1)[0]
    # two layers of a 4-token window reach back 2 x 3 tokens: position 0 reaches positions 0..6, no further
    assert (diff[:7] > 0).all() and (diff[7:] == 0).all(), diff
    full = speedrun(n_layer=2).eval()
    assert (full(idx, idx)[0] - full(other, other)[0]).abs().amax(-1)[0, 7:].min() > 0


# --- every switch off is nanoGPT's model ------------------------------------------------------------------
def test_every_switch_off_computes_the_nanogpt_models_loss_on_the_same_weights():
    """The state dict maps name for name (transformer.wte/wpe/h.*/ln_f, lm_head tied to wte): the identity."""
    torch.manual_seed(3)
    gpt = models.build_model("gpt", SMALL, vocab_size=11)
    ours = speedrun(seed=4)
    assert set(ours.state_dict()) == set(gpt.state_dict())
    ours.load_state_dict(gpt.state_dict(), strict=True)
    idx, targets = torch.randint(0, 11, (3, 16)), torch.randint(0, 11, (3, 16))
    (_, want), (_, got) = gpt(idx, targets), ours(idx, targets)
    assert torch.allclose(got, want, atol=1e-6, rtol=0), (got, want)
    assert abs(got.item() - speedrun(seed=4)(idx, targets)[1].item()) > 1e-4  # other weights: another loss
    torch.manual_seed(5)
    want_text = gpt.generate(idx[:1, :4], 6)
    torch.manual_seed(5)
    assert torch.equal(ours.generate(idx[:1, :4], 6), want_text)


def test_the_switched_on_model_is_a_different_function_that_still_trains():
    model = models.build_model("speedrun", {**SMALL, "value_embeds": 2}, vocab_size=11)
    opt = muon_with_adamw(model, {**TRAIN, "lr": 1e-2, "muon_lr": 0.05, "muon_momentum": 0.95})
    idx = torch.randint(0, 11, (8, 16))
    first = None
    for _ in range(30):
        _, loss = model(idx, idx.roll(-1, 1))
        loss.backward()
        opt.step()
        opt.zero_grad()
        first = first if first is not None else loss.item()
    assert loss.item() < first - 1.0, (first, loss.item())


# --- the schedule -----------------------------------------------------------------------------------------
def test_wsd_schedule_warms_up_holds_then_cools_down_linearly_to_min_lr():
    t = config.load("speedrun", ["train.max_steps=100", "train.warmup_steps=10", "train.lr=1.0",
                                 "train.min_lr=0.1", "train.cooldown_frac=0.4"], has_cuda=False)["train"]
    assert t["schedule"] == "wsd"
    assert lr_at(0, t) == pytest.approx(1 / 11) and lr_at(9, t) == pytest.approx(10 / 11)
    assert [lr_at(s, t) for s in (10, 35, 60)] == [1.0, 1.0, 1.0]
    assert lr_at(80, t) == pytest.approx(0.1 + 0.5 * 0.9)
    assert lr_at(100, t) == pytest.approx(0.1)
    cosine = config.load("nanogpt", ["train.max_steps=100", "train.warmup_steps=10"], has_cuda=False)["train"]
    assert cosine["schedule"] == "cosine" and cosine["optimizer"] == "adamw"
    assert lr_at(35, cosine) < lr_at(10, cosine)


# --- the preset through the real loop ---------------------------------------------------------------------
FEW_STEPS = ("profile=cpu", "train.batch_size=8", "train.warmup_steps=2", "train.lr_decay_steps=16",
             "train.log_interval=1", "train.eval_interval=8", "train.eval_iters=2", "train.sample_tokens=16",
             "train.system_interval=0.5", "train.checkpoint_interval=0")


def test_speedrun_preset_trains_with_muon_and_resumes_with_identical_losses(tmp_path):
    full = tmp_path / "full" / "events.jsonl"
    assert train_in_process("speedrun", *FEW_STEPS, "train.max_steps=16", log=full) == 0
    start = events_of(full, "run_start")[0]
    assert start["arch"] == "speedrun" and start["config"]["train"]["optimizer"] == "muon"
    losses = [e["loss"] for e in events_of(full, "step")]
    assert len(losses) == 16 and sum(losses[-4:]) / 4 < sum(losses[:4]) / 4 - 0.3, losses
    part = tmp_path / "part" / "events.jsonl"
    assert train_in_process("speedrun", *FEW_STEPS, "train.max_steps=9", log=part) == 0
    assert train_in_process("speedrun", "train.max_steps=16", log=part, resume=str(part.parent)) == 0
    want = {e["step"]: e["loss"] for e in events_of(full, "step")}
    got = {e["step"]: e["loss"] for e in events_of(part, "step") if e["step"] > 9}
    assert sorted(got) == list(range(10, 17))
    assert all(abs(got[s] - want[s]) <= 1e-6 for s in got), (got, want)


def test_the_ablation_adds_one_change_per_row_from_nanogpts_model_to_the_presets_defaults():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
    from bench_speedrun import LEFT_OUT, ablation_rows

    def loaded(overrides):
        cfg = config.load("speedrun", ["profile=cpu", *overrides], has_cuda=False)
        return {**{f"model.{k}": v for k, v in cfg["model"].items()}, **{f"train.{k}": v for k, v in cfg["train"].items()}}

    rows = [loaded(o) for _, o in ablation_rows()[:-len(LEFT_OUT)]]
    assert all(not v for k, v in rows[0].items() if k.split(".")[1] in ALL_OFF)  # nanoGPT's model
    assert rows[0]["train.optimizer"] == "adamw" and rows[0]["train.schedule"] == "cosine"
    assert rows[-1] == loaded([])  # the last row is the preset's CPU defaults
    for before, after in zip(rows, rows[1:]):
        changed_keys = {k for k in after if after[k] != before[k]}
        assert len({k.split(".")[1] for k in changed_keys} - {"beta1", "beta2", "weight_decay", "grad_clip"}) <= 1
        assert changed_keys
