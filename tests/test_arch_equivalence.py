"""The sequence architectures compute what their papers say, in every form they have.

Mamba's chunked training scan equals the sequential recurrence; RWKV's chunked wkv equals its recurrence;
RetNet's parallel, recurrent and chunkwise retention agree; generation from the recurrent state equals the
full-sequence forward; BitNet's weights really are ternary, train through the straight-through estimator
and export to an int8 model with the same logits. All in fp32 with tiny dimensions.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from kernels.bitlinear import activation_quant, bitlinear_ref, weight_quant
from kernels.retention import retention_chunkwise, retention_parallel, retention_recurrent
from kernels.selective_scan import selective_scan_chunked, selective_scan_ref
from kernels.wkv import wkv_chunked, wkv_ref
from trainers.models import bitnet, build_model

ATOL = 1e-4


def close(a, b, atol=ATOL, rtol=1e-4):
    return torch.allclose(a, b, atol=atol, rtol=rtol), f"max abs diff {(a - b).abs().max().item():.3g}"


def perturb_(model, std=0.05, seed=0):
    """Random weights everywhere (some layers start at zero, which would make equivalences trivial)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * std)
    return model


def step_logits(model, idx):
    """Logits from feeding idx one token at a time through the model's recurrent `step`."""
    state = model.init_state(idx.size(0), idx.device)
    out = []
    for t in range(idx.size(1)):
        logits, state = model.step(idx[:, t], state)
        out.append(logits)
    return torch.stack(out, dim=1)


def greedy_by_full_forward(model, idx, n):
    """Greedy continuation recomputing the whole sequence every token (the slow, obviously right way)."""
    for _ in range(n):
        logits, _ = model(idx, idx)  # targets make every position's logits come back
        idx = torch.cat([idx, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return idx


# ----------------------------------------------------------------------------------------------------
# Mamba

def mamba_scan_inputs(b, l, d, n, seed=0, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(b, l, d, generator=g)
    delta = F.softplus(torch.randn(b, l, d, generator=g) - 1)              # Δ > 0, some large
    A = -torch.exp(torch.randn(d, n, generator=g))                         # A < 0
    B = torch.randn(b, l, n, generator=g)
    C = torch.randn(b, l, n, generator=g)
    D = torch.randn(d, generator=g)
    h0 = torch.randn(b, d, n, generator=g)
    ts = [u, delta, A, B, C, D, h0]
    return [t.requires_grad_(requires_grad) for t in ts]


@pytest.mark.parametrize("length", [1, 7, 33, 61])
@pytest.mark.parametrize("chunk", [None, 4, 5])
def test_mamba_chunked_scan_equals_sequential_scan_on_odd_lengths(length, chunk):
    u, delta, A, B, C, D, h0 = mamba_scan_inputs(2, length, 6, 4)
    y_ref, h_ref = selective_scan_ref(u, delta, A, B, C, D, h0)
    y, h = selective_scan_chunked(u, delta, A, B, C, D, h0, chunk=chunk)
    assert y.shape == (2, length, 6) and h.shape == (2, 6, 4)
    assert close(y, y_ref)[0], close(y, y_ref)[1]
    assert close(h, h_ref)[0], close(h, h_ref)[1]


def test_mamba_chunked_scan_gradients_equal_sequential_scan_gradients():
    ins_ref = mamba_scan_inputs(2, 29, 6, 4, seed=1, requires_grad=True)
    ins = mamba_scan_inputs(2, 29, 6, 4, seed=1, requires_grad=True)
    w = torch.randn(2, 29, 6, generator=torch.Generator().manual_seed(2))
    (selective_scan_ref(*ins_ref)[0] * w).sum().backward()
    (selective_scan_chunked(*ins, chunk=6)[0] * w).sum().backward()
    for name, a, b in zip("u delta A B C D h0".split(), ins, ins_ref):
        ok, msg = close(a.grad, b.grad)
        assert ok, f"grad of {name}: {msg}"


def test_mamba_scan_stays_finite_under_very_strong_decay():
    u, delta, A, B, C, D, h0 = mamba_scan_inputs(1, 40, 4, 3, seed=3)
    delta = delta * 200  # Σ Δ·A over a chunk far below the fp32 exp range
    y_ref, _ = selective_scan_ref(u, delta, A, B, C, D, h0)
    y, _ = selective_scan_chunked(u, delta, A, B, C, D, h0, chunk=8)
    assert torch.isfinite(y).all()
    assert close(y, y_ref, atol=1e-3)[0], close(y, y_ref)[1]


def tiny_mamba():
    torch.manual_seed(0)
    return build_model("mamba", dict(n_layer=2, n_embd=16, d_state=4, block_size=32), vocab_size=11).eval()


def test_mamba_recurrent_step_logits_equal_full_forward():
    model = tiny_mamba()
    idx = torch.randint(0, 11, (2, 23), generator=torch.Generator().manual_seed(0))
    full, _ = model(idx, idx)
    with torch.no_grad():
        rec = step_logits(model, idx)
    assert close(rec, full)[0], close(rec, full)[1]


def test_mamba_generation_from_recurrent_state_equals_full_forward_generation():
    model = tiny_mamba()
    prompt = torch.randint(0, 11, (1, 5), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        fast = model.generate(prompt, 12, top_k=1)
        slow = greedy_by_full_forward(model, prompt, 12)
    assert torch.equal(fast, slow)


# ----------------------------------------------------------------------------------------------------
# RWKV

def wkv_inputs(B, T, H, K, seed=0, strong=False):
    g = torch.Generator().manual_seed(seed)
    r, k, v = (torch.randn(B, T, H, K, generator=g) * 0.5 for _ in range(3))
    log_w = -torch.exp(torch.randn(B, T, H, K, generator=g) * (3.0 if strong else 1.0) - 1)  # log decay < 0
    u = torch.randn(H, K, generator=g) * 0.5
    state = torch.randn(B, H, K, K, generator=g) * 0.5
    return r, k, v, log_w, u, state


@pytest.mark.parametrize("length", [1, 9, 37])
@pytest.mark.parametrize("chunk", [8, 16])
def test_rwkv_chunked_wkv_equals_recurrent_on_odd_lengths(length, chunk):
    r, k, v, log_w, u, state = wkv_inputs(2, length, 3, 8, strong=True)
    y_ref, s_ref = wkv_ref(r, k, v, log_w, u, state)
    y, s = wkv_chunked(r, k, v, log_w, u, state, chunk=chunk)
    assert y.shape == (2, length, 3, 8) and s.shape == (2, 3, 8, 8)
    assert torch.isfinite(y).all()
    assert close(y, y_ref)[0], close(y, y_ref)[1]
    assert close(s, s_ref)[0], close(s, s_ref)[1]


def tiny_rwkv():
    torch.manual_seed(0)
    model = build_model("rwkv", dict(n_layer=2, n_embd=16, head_size=8, block_size=32, wkv_chunk=8,
                                     mix_lora=4, decay_lora=4), vocab_size=11)
    return perturb_(model).eval()


def test_rwkv_recurrent_step_logits_equal_chunked_forward():
    model = tiny_rwkv()
    idx = torch.randint(0, 11, (2, 21), generator=torch.Generator().manual_seed(0))
    full, _ = model(idx, idx)
    with torch.no_grad():
        rec = step_logits(model, idx)
    assert close(rec, full)[0], close(rec, full)[1]


def test_rwkv_generation_from_recurrent_state_equals_full_forward_generation():
    model = tiny_rwkv()
    prompt = torch.randint(0, 11, (1, 4), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.equal(model.generate(prompt, 10, top_k=1), greedy_by_full_forward(model, prompt, 10))


def activation_bytes_of(fn):
    """Bytes that autograd keeps for backward while fn runs (the measure cockpit's memory probe uses)."""
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return total


def test_rwkv_memory_per_generated_token_stays_flat_as_context_grows():
    model = tiny_rwkv()
    calls = []
    step = model.step

    def watched_step(token, state):
        calls.append(token.shape)
        return step(token, state)

    model.step = watched_step
    with torch.no_grad():
        state = model.init_state(1, "cpu")
        tok = torch.zeros(1, dtype=torch.long)
        per_token = {}
        for t in range(300):  # far past block_size=32: a recurrent model has no context window
            if t in (10, 299):
                per_token[t] = activation_bytes_of(lambda: model.step(tok, state))
            _, state = model.step(tok, state)
        state_bytes = sum(x.numel() * x.element_size() for layer in state for x in _flatten(layer))
    fresh = sum(x.numel() * x.element_size() for layer in model.init_state(1, "cpu") for x in _flatten(layer))
    assert state_bytes == fresh, "the recurrent state grew with the context"
    assert per_token[10] == per_token[299] > 0, f"memory per token grew: {per_token}"
    assert all(s == (1,) for s in calls), "each step must see one token, never the whole context"
    out = model.generate(torch.zeros(1, 1, dtype=torch.long), 100, top_k=1)
    assert out.shape == (1, 101)


def _flatten(x):
    if torch.is_tensor(x):
        return [x]
    if isinstance(x, (tuple, list)):
        return [t for item in x for t in _flatten(item)]
    return []


# ----------------------------------------------------------------------------------------------------
# RetNet

def retention_inputs(B, H, T, dk, dv, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, T, dk, generator=g) * 0.5
    k = torch.randn(B, H, T, dk, generator=g) * 0.5
    v = torch.randn(B, H, T, dv, generator=g)
    gamma = 1 - 2.0 ** (-5.0 - torch.arange(H, dtype=torch.float32))
    return q, k, v, gamma


@pytest.mark.parametrize("length", [1, 16, 37])
def test_retention_parallel_recurrent_and_chunkwise_forms_agree(length):
    q, k, v, gamma = retention_inputs(2, 3, length, 8, 12)
    par = retention_parallel(q, k, v, gamma)
    rec, s_rec = retention_recurrent(q, k, v, gamma)
    chk, s_chk = retention_chunkwise(q, k, v, gamma, chunk=16)  # 37 = 2 full chunks + 5
    assert close(rec, par)[0], close(rec, par)[1]
    assert close(chk, par)[0], close(chk, par)[1]
    assert close(s_chk, s_rec)[0], close(s_chk, s_rec)[1]


def test_retention_chunkwise_carries_an_initial_state_like_the_recurrence():
    q, k, v, gamma = retention_inputs(1, 2, 23, 4, 6, seed=4)
    state = torch.randn(1, 2, 4, 6)
    rec, s_rec = retention_recurrent(q, k, v, gamma, state)
    chk, s_chk = retention_chunkwise(q, k, v, gamma, chunk=7, state=state)
    assert close(chk, rec)[0] and close(s_chk, s_rec)[0]


@pytest.mark.parametrize("length", [5, 33, 48])
def test_retnet_layer_forms_agree_after_group_norm(length):
    torch.manual_seed(0)
    model = build_model("retnet", dict(n_layer=1, n_head=3, n_embd=24, block_size=64, chunk_size=16),
                        vocab_size=11)
    msr = perturb_(model).eval().blocks[0].msr
    x = torch.randn(2, length, 24)
    with torch.no_grad():
        outs = {form: msr(x, form) for form in ("parallel", "recurrent", "chunkwise")}
    for form in ("recurrent", "chunkwise"):
        assert close(outs[form], outs["parallel"])[0], f"{form}: {close(outs[form], outs['parallel'])[1]}"


def test_retnet_recurrent_generation_equals_full_forward():
    torch.manual_seed(0)
    model = build_model("retnet", dict(n_layer=2, n_head=2, n_embd=16, block_size=32, chunk_size=8),
                        vocab_size=11).eval()
    idx = torch.randint(0, 11, (2, 19), generator=torch.Generator().manual_seed(0))
    full, _ = model(idx, idx)
    with torch.no_grad():
        rec = step_logits(model, idx)
        prompt = idx[:1, :4]
        assert torch.equal(model.generate(prompt, 10, top_k=1), greedy_by_full_forward(model, prompt, 10))
    assert close(rec, full)[0], close(rec, full)[1]


# ----------------------------------------------------------------------------------------------------
# BitNet b1.58

def tiny_bitnet(**kw):
    torch.manual_seed(0)
    return build_model("bitnet", dict(n_layer=2, n_head=2, n_embd=32, block_size=32, **kw), vocab_size=11)


def bitlinears(model):
    return [(name, m) for name, m in model.named_modules() if isinstance(m, bitnet.BitLinear)]


def test_bitnet_quantised_weights_take_exactly_three_values_per_tensor():
    model = tiny_bitnet()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    idx = torch.randint(0, 11, (4, 16))
    for _ in range(3):  # before and after a few updates
        for name, layer in bitlinears(model):
            w_int, gamma = weight_quant(layer.weight)
            values = torch.unique(w_int * gamma)
            assert len(values) == 3, f"{name}: {values.tolist()}"
            assert torch.allclose(values, torch.stack([-gamma, torch.zeros(()), gamma]))
        _, loss = model(idx, idx)
        loss.backward()
        opt.step()
        opt.zero_grad()


def test_bitnet_activations_are_int8_per_token():
    x = torch.randn(3, 5, 16) * torch.tensor([0.01, 1.0, 100.0])[:, None, None]
    x_int, scale = activation_quant(x)
    assert torch.equal(x_int, x_int.round()) and x_int.min() >= -128 and x_int.max() <= 127
    assert torch.equal(x_int.abs().amax(-1), torch.full((3, 5), 127.0))  # each token uses the full range
    assert ((x_int / scale - x).abs() <= 0.5 / scale + 1e-6).all()  # at most half a step per token


def test_bitnet_gradients_reach_the_latent_weights():
    model = tiny_bitnet()
    idx = torch.randint(0, 11, (4, 16))
    _, loss = model(idx, idx)
    loss.backward()
    for name, layer in bitlinears(model):
        assert layer.weight.grad is not None and torch.isfinite(layer.weight.grad).all(), name
        assert layer.weight.grad.abs().sum() > 0, f"{name}: no gradient through the quantiser"
    # the STE gradient is the gradient w.r.t. the dequantised weight, i.e. dL/dW = x_deqᵀ · dL/dy
    x = torch.randn(6, 32, requires_grad=True)
    w = torch.randn(8, 32, requires_grad=True)
    bitlinear_ref(x, w).sum().backward()
    x_int, s = activation_quant(F.rms_norm(x.detach(), (32,), eps=1e-5))
    assert torch.allclose(w.grad, (x_int / s).sum(0).expand(8, 32), atol=1e-5)


def test_bitnet_exported_ternary_model_gives_the_training_forward_logits():
    model = tiny_bitnet()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    idx = torch.randint(0, 11, (3, 20), generator=torch.Generator().manual_seed(5))
    for _ in range(2):
        _, loss = model(idx, idx)
        loss.backward()
        opt.step()
        opt.zero_grad()
    model.train()  # training-mode forward (dropout is 0)
    with torch.no_grad():
        train_logits, _ = model(idx, idx)
    exported = model.export_ternary()
    assert not any(isinstance(m, bitnet.BitLinear) for m in exported.modules())
    ternary = [m for m in exported.modules() if isinstance(m, bitnet.TernaryLinear)]
    assert len(ternary) == len(bitlinears(model))
    for m in ternary:
        assert m.w_int.dtype == torch.int8 and set(torch.unique(m.w_int).tolist()) <= {-1, 0, 1}
    with torch.no_grad():
        export_logits, _ = exported(idx, idx)
    assert torch.allclose(export_logits, train_logits, atol=1e-5, rtol=1e-5), \
        f"max abs diff {(export_logits - train_logits).abs().max():.3g}"


def test_bitnet_two_stage_schedule_drops_lr_and_weight_decay_at_half_way():
    model = tiny_bitnet(stage2_lr_scale=0.4)
    opt = torch.optim.AdamW([{"params": [model.wte.weight], "weight_decay": 0.1},
                             {"params": [model.norm_f.weight], "weight_decay": 0.0}], lr=1e-3)
    lr0 = model.on_step(opt, 0, 100, 1e-3)
    wd0 = opt.param_groups[0]["weight_decay"]
    model.on_step(opt, 25, 100, 1e-3)
    wd25 = opt.param_groups[0]["weight_decay"]
    lr50 = model.on_step(opt, 50, 100, 1e-3)
    wd50 = opt.param_groups[0]["weight_decay"]
    assert lr0 == 1e-3 and math.isclose(lr50, 4e-4)
    assert math.isclose(wd0, 0.1) and 0 < wd25 < wd0 and wd50 == 0.0
    assert opt.param_groups[1]["weight_decay"] == 0.0


# ----------------------------------------------------------------------------------------------------
# All: causal

@pytest.mark.parametrize("arch", ["mamba", "rwkv", "retnet", "bitnet", "moe"])
def test_no_position_sees_a_later_token(arch):
    torch.manual_seed(0)
    kw = dict(mamba=dict(n_embd=16, d_state=4), rwkv=dict(n_embd=16, head_size=8, wkv_chunk=8),
              retnet=dict(n_embd=16, n_head=2, chunk_size=8), bitnet=dict(n_embd=16, n_head=2),
              moe=dict(n_embd=16, n_head=2, capacity_factor=8.0))[arch]
    model = perturb_(build_model(arch, dict(n_layer=2, block_size=32, **kw), vocab_size=11)).eval()
    idx = torch.randint(0, 11, (2, 29), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        base, _ = model(idx, idx)
        for t in (0, 8, 13, 27):
            changed = idx.clone()
            changed[:, t] = (changed[:, t] + 1) % 11
            logits, _ = model(changed, changed)
            assert torch.equal(logits[:, :t], base[:, :t]), f"position < {t} changed"
            assert not torch.equal(logits[:, t], base[:, t]), f"position {t} ignores its own token"
