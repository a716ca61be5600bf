"""The models against their reference implementations: the departures an audit found (Switch / ST-MoE routing,
mamba_simple.py, RWKV-LM's v6 training code, minGPT's optimizer groups, nanoGPT's padded vocabulary and TF32,
flash-linear-attention's bf16 retention, BitLinear's backward, the QLoRA reference script), each pinned by what
a run would show."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from kernels import integrate
from trainers import config
from trainers.models import build_model
from trainers.tasks import load_task

CPU = torch.device("cpu")


def cpu_task(preset: str, *overrides: str):
    return load_task(config.load(preset, list(overrides), profile="cpu", has_cuda=False), CPU)


def decay_steps(task, model, steps: int = 20) -> dict[str, torch.Tensor]:
    """The parameters after `steps` AdamW steps of the task's optimizer on zero gradients: only weight decay
    moves them."""
    opt = task.configure_optimizer(model)
    for group in opt.param_groups:
        group["lr"] = 1e-2
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    for _ in range(steps):
        opt.step()
    return dict(model.named_parameters())


def moved(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor], name: str) -> bool:
    return not torch.equal(before[name], after[name])


def snapshot(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


# --- 1. MoE routing (Switch, ST-MoE) ------------------------------------------------------------------------
def tiny_moe(**kw):
    torch.manual_seed(0)
    cfg = dict(n_layer=2, n_head=2, n_embd=16, block_size=16, dropout=0.0, **kw)
    return build_model("moe", cfg, vocab_size=11)


def test_top1_moe_router_learns_from_the_task_loss_through_switch_gates():
    model = tiny_moe(top_k=1, capacity_factor=8.0, aux_loss_coef=0.0, z_loss_coef=0.0).train()
    idx = torch.randint(0, 11, (4, 16), generator=torch.Generator().manual_seed(1))
    _, loss = model(idx, idx)
    loss.backward()
    layer = model.moe_layers[0]
    # a renormalised single gate is 1 whatever the router says: its gradient was ~1e-9 (fp32 noise)
    assert layer.router.weight.grad.norm() > 1e-4
    # the output is the raw probability times the chosen expert (Switch, eq. 2)
    x = torch.randn(2, 5, 16)
    y, _ = layer(x)
    tokens = x.reshape(-1, 16)
    p = torch.softmax(tokens @ layer.router.weight.detach().t(), dim=-1)
    top_p, top_e = p.max(dim=-1)
    want = torch.stack([g * (F.gelu(t @ layer.c_fc[e], approximate="tanh") @ layer.c_proj[e])
                        for t, g, e in zip(tokens, top_p, top_e)])
    assert torch.allclose(y.reshape(-1, 16), want, atol=1e-5)
    assert float(top_p.max()) < 1.0


def test_moe_router_runs_in_fp32_under_bf16_autocast():
    layer = tiny_moe().moe_layers[0]
    x = torch.randn(6, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = layer.router_logits(x)
    assert logits.dtype == torch.float32
    assert torch.allclose(logits, x @ layer.router.weight.t(), atol=1e-6)  # bf16 logits would be off by ~1e-2


def test_router_z_loss_is_added_to_the_training_loss_with_its_coefficient():
    idx = torch.randint(0, 11, (2, 16), generator=torch.Generator().manual_seed(2))
    losses, zs = {}, []
    for coef in (0.0, 0.5):
        model = tiny_moe(z_loss_coef=coef).train()
        hook = model.moe_layers[0].register_forward_hook(lambda m, a, out: zs.append(out[2].item()))
        losses[coef] = model(idx, idx)[1].item()
        hook.remove()
    assert zs[0] == zs[1] > 0  # ST-MoE eq. 5: mean over tokens of logsumexp(router logits)^2
    assert losses[0.5] - losses[0.0] == pytest.approx(0.5 * zs[0], rel=1e-4)  # one MoE layer: its z is the mean


def test_moe_eval_drops_nothing_so_a_sequence_gets_the_same_logits_in_any_batch():
    model = tiny_moe(capacity_factor=0.25).eval()  # in training, most token-choices would be dropped
    g = torch.Generator().manual_seed(3)
    batch = torch.randint(0, 11, (4, 16), generator=g)
    with torch.no_grad():
        alone = model(batch[:1], batch[:1])[0]
        together = model(batch, batch)[0][:1]
    assert int(model.moe_layers[0].last_stats[2]) == 0
    assert torch.allclose(alone, together, atol=1e-5)
    model.train()
    model(batch, batch)
    assert int(model.moe_layers[0].last_stats[2]) > 0  # training keeps the capacity (and counts drops)


# --- 2. Mamba (mamba_simple.py) -----------------------------------------------------------------------------
def test_mamba_a_log_and_d_get_no_weight_decay():
    task = cpu_task("mamba", "train.weight_decay=0.1")
    model = task.build_model()
    before = snapshot(model)
    after = decay_steps(task, model)
    assert not moved(before, after, "layers.0.mixer.A_log") and not moved(before, after, "layers.0.mixer.D")
    assert moved(before, after, "layers.0.mixer.in_proj.weight")  # the projections still decay


def test_mamba_initial_dt_is_floored_and_projections_use_mamba_ssm_init():
    torch.manual_seed(0)
    cfg = dict(n_layer=4, n_embd=64, d_state=8, block_size=16, dt_min=1e-6, dt_max=1e-5)
    model = build_model("mamba", cfg, vocab_size=11)
    mixer = model.layers[0].mixer
    dt = F.softplus(mixer.dt_proj.bias)
    assert float(dt.detach().min()) == pytest.approx(1e-4, rel=1e-3)  # dt_init_floor, not the 1e-6..1e-5 drawn
    for lin, scale in ((mixer.in_proj, 1.0), (mixer.x_proj, 1.0), (mixer.out_proj, 1 / math.sqrt(4))):
        bound = scale / math.sqrt(lin.in_features)  # nn.Linear's U(±1/sqrt(fan_in)), out_proj / sqrt(n_layer)
        w = lin.weight.detach()
        assert float(w.abs().max()) <= bound
        assert float(w.std()) == pytest.approx(bound / math.sqrt(3), rel=0.1)


# --- 3. RWKV-6 (RWKV-LM) ------------------------------------------------------------------------------------
def tiny_rwkv(**kw):
    torch.manual_seed(0)
    cfg = dict(n_layer=2, n_embd=32, head_size=16, mix_lora=8, decay_lora=8, block_size=16, **kw)
    return build_model("rwkv", cfg, vocab_size=11)


def test_l2wrap_leaves_the_loss_and_pushes_down_each_positions_largest_logit():
    from kernels.logits import cross_entropy

    g = torch.Generator().manual_seed(4)
    logits = (torch.randn(2, 5, 7, generator=g) * 3).requires_grad_()
    target = torch.randint(0, 7, (2, 5), generator=g)
    target[0, 0] = -1  # an ignored position gets no L2Wrap gradient either
    plain = F.cross_entropy(logits.reshape(-1, 7), target.reshape(-1), ignore_index=-1)
    wrapped = cross_entropy(logits, target, ignore_index=-1, l2wrap=1e-2)
    assert wrapped.item() == plain.item()
    (g_plain,) = torch.autograd.grad(plain, logits)
    (g_wrap,) = torch.autograd.grad(wrapped, logits)
    maxx, ids = logits.detach().max(-1, keepdim=True)
    want = torch.zeros_like(logits).scatter_(-1, ids, maxx * 1e-2 / 10) * (target != -1).unsqueeze(-1)
    assert torch.allclose(g_wrap - g_plain, want, atol=1e-7)


def test_rwkv_trains_with_l2wrap_by_default():
    idx = torch.randint(0, 11, (2, 16), generator=torch.Generator().manual_seed(5))
    grads = {}
    for l2wrap in (0.0, None):
        model = tiny_rwkv(**({} if l2wrap is None else {"l2wrap": l2wrap}))
        _, loss = model(idx, idx)
        loss.backward()
        grads[l2wrap] = (loss.item(), model.head.weight.grad.clone())
    assert tiny_rwkv().config.l2wrap == 1e-4  # RWKV-LM's factor
    assert grads[0.0][0] == grads[None][0]
    assert not torch.equal(grads[0.0][1], grads[None][1])


def test_rwkv_gate_starts_at_gain_01_and_ln_x_at_the_layer_scale():
    model = tiny_rwkv()
    for i, block in enumerate(model.blocks):
        assert torch.allclose(torch.linalg.svdvals(block.att.gate.weight.detach()), torch.full((32,), 0.1),
                              atol=1e-5)
        assert torch.allclose(block.att.ln_x.weight, torch.full((32,), ((1 + i) / 2) ** 0.7))


def test_rwkv_lora_matrices_are_not_decayed_and_the_decay_learns_at_twice_the_lr():
    task = cpu_task("rwkv", "train.weight_decay=0.1")
    model = task.build_model()
    opt = task.configure_optimizer(model)
    decay = model.blocks[0].att.decay
    (group,) = [g for g in opt.param_groups if any(p is decay for p in g["params"])]
    assert group["lr_scale"] == 2.0 and group["weight_decay"] == 0.0
    before = snapshot(model)
    after = decay_steps(task, model)
    for name in ("maa_A", "maa_B", "decay_A", "decay_B"):
        assert not moved(before, after, f"blocks.0.att.{name}"), name
    assert moved(before, after, "blocks.0.att.receptance.weight")


# --- 4. minGPT's optimizer groups ---------------------------------------------------------------------------
def test_mingpt_decays_linear_weights_only_not_its_embeddings():
    task = cpu_task("mingpt", "train.weight_decay=0.1")
    model = task.build_model()
    before = snapshot(model)
    after = decay_steps(task, model)
    assert not moved(before, after, "transformer.wte.weight")
    assert not moved(before, after, "transformer.wpe.weight")
    assert moved(before, after, "transformer.h.0.attn.c_attn.weight")


# --- 5. GPT-2: padded vocabulary, TF32 ----------------------------------------------------------------------
def test_gpt2_124m_pads_its_vocabulary_to_50304_rows():
    cfg = config.load("gpt2-124m", profile="full", has_cuda=True)
    with torch.device("meta"):
        model = build_model("gpt", cfg["model"], vocab_size=50257)
    assert model.lm_head.weight.shape == (50304, 768)
    assert model.transformer.wte.weight is model.lm_head.weight


def test_padded_vocabulary_gives_the_unpadded_loss_and_is_never_sampled():
    torch.manual_seed(0)
    small = dict(n_layer=1, n_head=2, n_embd=16, block_size=16, dropout=0.0)
    padded = build_model("gpt", {**small, "vocab_pad_multiple": 64}, vocab_size=11)
    plain = build_model("gpt", small, vocab_size=11)
    state = padded.state_dict()
    state = {k: (v[:11] if k in ("transformer.wte.weight", "lm_head.weight") else v) for k, v in state.items()}
    plain.load_state_dict(state)
    idx = torch.randint(0, 11, (2, 16), generator=torch.Generator().manual_seed(6))
    assert padded(idx, idx)[1].item() == pytest.approx(plain(idx, idx)[1].item(), rel=1e-6)
    logits, _ = padded(idx)
    assert logits.shape[-1] == 64 and torch.isinf(logits[..., 11:]).all()
    torch.manual_seed(1)
    out = padded.generate(idx[:, :2], 30, temperature=5.0)
    assert int(out.max()) < 11


def test_tf32_matmuls_are_enabled_for_cuda_runs_only():
    saved = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("highest")
        assert integrate.tf32_matmuls(torch.device("cpu")) is False
        assert torch.get_float32_matmul_precision() == "highest"
        assert integrate.tf32_matmuls(torch.device("cuda")) is True
        assert torch.get_float32_matmul_precision() == "high"
    finally:
        torch.set_float32_matmul_precision(saved)


# --- 6. RetNet feeds bf16 to the retention kernel -----------------------------------------------------------
def test_retnet_feeds_the_retention_kernel_bf16_under_autocast(interpreted, monkeypatch):
    import kernels.retention as retention

    seen = []
    real = retention.retention

    def spy(q, k, v, gamma, state=None):
        seen.append((q.dtype, k.dtype, v.dtype))
        return real(q, k, v, gamma, state)

    monkeypatch.setattr(retention, "retention", spy)
    torch.manual_seed(0)
    model = build_model("retnet", dict(n_layer=1, n_head=2, n_embd=32, chunk_size=8, block_size=16),
                        vocab_size=11, kernels="triton")
    idx = torch.randint(0, 11, (2, 16), generator=torch.Generator().manual_seed(7))
    _, loss32 = model(idx, idx)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, loss16 = model(idx, idx)
    loss16.backward()
    assert seen == [(torch.float32,) * 3, (torch.bfloat16,) * 3]
    assert loss16.item() == pytest.approx(loss32.item(), abs=3e-2)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


# --- 7. BitLinear's backward in Triton ----------------------------------------------------------------------
class LaunchCounter:
    """Stands in for a @triton.jit kernel: counts `kernel[grid](...)` launches and runs them."""

    def __init__(self, kernel):
        self.kernel, self.launches = kernel, 0

    def __getitem__(self, grid):
        self.launches += 1
        return self.kernel[grid]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_bitlinear_backward_runs_triton_kernels_and_matches_the_reference(interpreted, monkeypatch, dtype):
    import kernels.bitlinear as bl

    counters = {name: LaunchCounter(getattr(bl, name)) for name in ("_grad_xn", "_grad_w")}
    for name, c in counters.items():
        monkeypatch.setattr(bl, name, c)
    g = torch.Generator().manual_seed(8)
    x = torch.randn(3, 7, 40, generator=g).requires_grad_()
    w = (torch.randn(24, 40, generator=g) * 0.1).requires_grad_()
    dy = torch.randn(3, 7, 24, generator=g)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        y = integrate.bitlinear(x, w)
    y.backward(dy.to(y.dtype))
    assert {n: c.launches for n, c in counters.items()} == {"_grad_xn": 1, "_grad_w": 1}
    xr, wr = x.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
    bl.bitlinear_ref(xr, wr).backward(dy)
    tol = 1e-4 if dtype == torch.float32 else 2e-2  # bf16 operands (as autocast's own matmul gradients)
    for got, want in ((x.grad, xr.grad), (w.grad, wr.grad)):
        assert (got - want).norm() / want.norm() < tol


# --- 9. QLoRA trains as the reference script ----------------------------------------------------------------
def test_qlora_defaults_to_paged_adamw_32bit_clip_03_and_a_constant_lr():
    from trainers.tasks.finetune import finetune_settings, lr_schedule, make_optimizer, optimizer_name

    cfg = config.load("qlora", profile="cpu", has_cuda=False)
    ft = finetune_settings(cfg)
    assert optimizer_name(ft) == "paged_adamw_32bit" and lr_schedule(ft) == "constant"
    assert cfg["train"]["grad_clip"] == 0.3
    layer = torch.nn.Linear(4, 4)
    opt = make_optimizer(layer, ft, cfg["train"], CPU)
    assert type(opt).__name__ == "AdamW32bit"  # the unpaged twin on CPU (paging needs CUDA unified memory)
    eight = make_optimizer(layer, {**ft, "optimizer": "paged_adamw_8bit"}, cfg["train"], CPU)
    assert type(eight).__name__ == "AdamW8bit"
    lora_ft = finetune_settings(config.load("lora", profile="cpu", has_cuda=False))
    assert optimizer_name(lora_ft) == "adamw" and lr_schedule(lora_ft) == "cosine"


def test_qlora_keeps_train_lr_at_every_step_with_no_warm_up():
    from trainers.loop import lr_at
    from trainers.tasks.finetune import Task

    cfg = config.load("qlora", profile="cpu", has_cuda=False)
    task = Task(cfg, CPU)
    t = cfg["train"]

    class Model(torch.nn.Module):
        def on_step(self, optimizer, step, max_steps, lr):
            return lr

    assert lr_at(0, t) < t["lr"] and lr_at(t["max_steps"] - 1, t) < t["lr"]  # what the cosine schedule gives
    for step in (0, 1, t["max_steps"] - 1):
        assert task.on_step(Model(), None, step, lr_at(step, t)) == t["lr"]


# --- bf16 autocast: the dtypes a GPU run hands the fused kernels, exercised on CPU -----------------------------
BF16_ARCHS = {
    "gpt": dict(n_layer=1, n_head=2, n_embd=32, block_size=16, vocab_pad_multiple=64),
    "mingpt": dict(n_layer=1, n_head=2, n_embd=32, block_size=16, embd_pdrop=0.0, resid_pdrop=0.0, attn_pdrop=0.0),
    "bitnet": dict(n_layer=1, n_head=2, n_embd=32, block_size=16),
    "mamba": dict(n_layer=1, n_embd=16, d_state=4, block_size=16),
    "rwkv": dict(n_layer=1, n_embd=32, head_size=16, mix_lora=8, decay_lora=8, block_size=16),
    "retnet": dict(n_layer=1, n_head=2, n_embd=32, chunk_size=8, block_size=16),
    "moe": dict(n_layer=2, n_head=2, n_embd=32, block_size=16, n_expert=4, capacity_factor=8.0),
    "llama": dict(n_layer=1, n_head=2, n_kv_head=1, n_embd=32, block_size=16, qk_norm=True),
}


@pytest.mark.parametrize("arch", list(BF16_ARCHS))
def test_fused_kernels_train_under_bf16_autocast_close_to_fp32(arch, interpreted):
    torch.manual_seed(0)
    model = build_model(arch, BF16_ARCHS[arch], vocab_size=11, kernels="triton")
    for p in model.parameters():  # away from the zero inits, so that every path carries a gradient
        p.data.add_(0.02 * torch.randn_like(p))
    idx = torch.randint(0, 11, (2, 16), generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        _, loss32 = model(idx, idx)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, loss = model(idx, idx)
    loss.backward()
    assert loss.dtype == torch.float32 and math.isfinite(loss.item())
    assert loss.item() == pytest.approx(loss32.item(), abs=5e-2)  # bf16 rounding, not a wrong dtype path
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert grads and all(g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads.values())
