"""BitLinear of BitNet b1.58 (Ma et al. 2024): ternary weights x int8 activations; the PyTorch reference
and the fused Triton kernels.

    x̂     = RMSNorm(x)  (no gain),  s = 127 / max|x̂|  per token,   x_int = Clip(Round(x̂ s), -128, 127)
    γ     = max(mean|W|, eps),                                       W_int = Clip(Round(W / γ), -1, 1)
    y     = (x_int W_int^T) γ / s
Straight-through estimator: the forward uses the rounded values, the backward passes the gradient through
Round/Clip unchanged (the scales are constants), so dL/dW and dL/dx̂ reach the latent weights.

PyTorch reference (the BitNet model trains with it and exports with the two quantisers):
    weight_quant(w, eps=1e-5) -> (w_int, gamma)
        w: (out, in) float. w_int: same shape, float with values in {-1, 0, 1}; gamma: 0-d tensor, w ≈ w_int·γ.
    activation_quant(x, eps=1e-5) -> (x_int, scale)
        x: (..., in). x_int: same shape, float with integer values in [-128, 127]; scale: (..., 1) = 127/max|x|,
        x ≈ x_int / scale.
    bitlinear_ref(x, weight, eps=1e-5) -> y
        x: (..., in), weight: (out, in) latent fp weights. The training-mode forward (RMSNorm without gain,
        quantise both, integer-valued matmul, rescale), with the straight-through estimator for backward.
The fused `bitlinear(x, weight, eps)` takes the arguments and gives the result and gradients of `bitlinear_ref`.

Forward, three Triton kernels:
    1. per row: RMSNorm, absmax and 8-bit quantisation in one pass -> x_int (int8), rstd, s
    2. W -> W_int (int8 in {-1, 0, 1}) given γ (one torch reduction)
    3. int8 x int8 matmul with int32 accumulation (tensor cores on sm80+), rescaled by γ / s in the epilogue
Backward (straight-through, as the reference):
    dx̂ = γ dy W_int,   dW = (dy / s)^T x_int          (dense matmuls: cuBLAS already does these best)
    dx  = rstd (dx̂ - x̂ mean(dx̂ x̂))                  (Triton: kernels/rmsnorm.py's backward, without gain)
Rounding is half-to-even, as torch.round, so the kernel and the reference quantise identically.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from kernels import interpreting
from kernels._harness import Kernel, generator, next_pow2, randn, register, row_tiles
from kernels._triton import tl, triton
from kernels.rmsnorm import rms_norm_backward


# ---------------------------------------------------------------------------------------------- PyTorch
def weight_quant(w, eps: float = 1e-5):
    """absmean ternary quantisation: γ = max(mean|W|, ε), W_int = Clip(Round(W / γ), -1, 1)."""
    gamma = w.abs().mean().clamp(min=eps)
    return (w / gamma).round().clamp(-1, 1), gamma


def activation_quant(x, eps: float = 1e-5):
    """per-token absmax 8-bit quantisation: s = 127 / max|x|, x_int = Clip(Round(x · s), -128, 127)."""
    scale = 127.0 / x.abs().amax(dim=-1, keepdim=True).clamp(min=eps)
    return (x * scale).round().clamp(-128, 127), scale


def ste(x, q):
    """Straight-through: the forward value is exactly q, the gradient flows to x unchanged."""
    return q.detach() + (x - x.detach())


def bitlinear_ref(x, weight, eps: float = 1e-5):
    """Training-mode BitLinear forward: RMSNorm -> int8 activations × ternary weights -> rescale."""
    x = F.rms_norm(x, (x.size(-1),), eps=eps)
    x_int, scale = activation_quant(x, eps)
    w_int, gamma = weight_quant(weight, eps)
    x_int = ste(x * scale.detach(), x_int)          # dL/dx = dL/dx_int · s (so that x ≈ x_int / s)
    w_int = ste(weight / gamma.detach(), w_int)     # dL/dW = dL/dW_int / γ (so that W ≈ W_int · γ)
    return F.linear(x_int, w_int) * (gamma.detach() / scale.detach())


# ----------------------------------------------------------------------------------------------- Triton
@triton.jit
def _round_half_even(v):
    r = tl.floor(v + 0.5)
    tie = (r - v) == 0.5
    odd = (r - 2.0 * tl.floor(r * 0.5)) != 0.0
    return tl.where(tie & odd, r - 1.0, r)


@triton.jit
def _act_quant(X, XQ, RSTD, SCALE, M, K, eps, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_K)
    rmask = rows < M
    mask = rmask[:, None] & (cols < K)[None, :]
    offs = rows[:, None] * K + cols[None, :]
    x = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
    rstd = 1.0 / tl.sqrt(tl.sum(x * x, axis=1) / K + eps)
    xn = x * rstd[:, None]
    scale = 127.0 / tl.maximum(tl.max(tl.abs(xn), axis=1), eps)
    q = tl.minimum(tl.maximum(_round_half_even(xn * scale[:, None]), -128.0), 127.0)
    tl.store(XQ + offs, q.to(tl.int8), mask=mask)
    tl.store(RSTD + rows, rstd, mask=rmask)
    tl.store(SCALE + rows, scale, mask=rmask)


@triton.jit
def _weight_quant(W, WQ, GAMMA, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    gamma = tl.load(GAMMA)
    w = tl.load(W + offs, mask=mask, other=0.0).to(tl.float32)
    q = tl.minimum(tl.maximum(_round_half_even(w / gamma), -1.0), 1.0)
    tl.store(WQ + offs, q.to(tl.int8), mask=mask)


@triton.jit
def _int8_matmul(XQ, WQ, SCALE, GAMMA, Y, M, N, K, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                 BLOCK_K: tl.constexpr):
    pid_m, pid_n = tl.program_id(0), tl.program_id(1)
    rm = pid_m.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n.to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.int32)
    for k0 in range(0, K, BLOCK_K):
        kk = k0 + rk
        a = tl.load(XQ + rm[:, None] * K + kk[None, :], mask=(rm < M)[:, None] & (kk < K)[None, :], other=0)
        b = tl.load(WQ + rn[None, :] * K + kk[:, None], mask=(rn < N)[None, :] & (kk < K)[:, None], other=0)
        acc += tl.dot(a, b, out_dtype=tl.int32)  # int8 x int8 -> int32: exact
    scale = tl.load(SCALE + rm, mask=rm < M, other=1.0)
    gamma = tl.load(GAMMA)
    y = acc.to(tl.float32) * (gamma / scale)[:, None]
    tl.store(Y + rm[:, None] * N + rn[None, :], y.to(Y.dtype.element_ty),
             mask=(rm < M)[:, None] & (rn < N)[None, :])


def _mm_tiles(M: int, N: int, K: int) -> tuple[int, int, int]:
    if interpreting():
        return min(next_pow2(M), 64), min(next_pow2(N), 64), min(next_pow2(K), 256)
    return 128, 128, 64


def quantize_activations(x2: torch.Tensor, eps: float = 1e-5):
    """x (M, K) -> x_int (M, K) int8, rstd (M,), s (M,): RMSNorm without gain, then absmax 8-bit."""
    M, K = x2.shape
    x_int = torch.empty(M, K, device=x2.device, dtype=torch.int8)
    rstd = torch.empty(M, device=x2.device, dtype=torch.float32)
    scale = torch.empty(M, device=x2.device, dtype=torch.float32)
    BM, BK, warps = row_tiles(M, K)
    _act_quant[(triton.cdiv(M, BM),)](x2, x_int, rstd, scale, M, K, eps, BLOCK_M=BM, BLOCK_K=BK, num_warps=warps)
    return x_int, rstd, scale


def quantize_weights(w: torch.Tensor, eps: float = 1e-5):
    """W (N, K) -> W_int (N, K) int8 in {-1, 0, 1}, γ (1,) = max(mean|W|, eps)."""
    w = w.contiguous()
    gamma = w.float().abs().mean().clamp(min=eps).reshape(1)
    w_int = torch.empty(w.shape, device=w.device, dtype=torch.int8)
    block = 1 << 15 if interpreting() else 1024
    _weight_quant[(triton.cdiv(w.numel(), block),)](w, w_int, gamma, w.numel(), BLOCK=block)
    return w_int, gamma


class BitLinearFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, eps):
        shape = x.shape
        x2 = x.reshape(-1, shape[-1]).contiguous()
        M, K = x2.shape
        N = weight.shape[0]
        x_int, rstd, scale = quantize_activations(x2, eps)
        w_int, gamma = quantize_weights(weight, eps)
        y = torch.empty(M, N, device=x.device, dtype=x.dtype)
        TM, TN, TK = _mm_tiles(M, N, K)
        _int8_matmul[(triton.cdiv(M, TM), triton.cdiv(N, TN))](x_int, w_int, scale, gamma, y, M, N, K,
                                                              BLOCK_M=TM, BLOCK_N=TN, BLOCK_K=TK, num_warps=8)
        ctx.save_for_backward(x2, x_int, w_int, rstd, scale, gamma)
        ctx.shape, ctx.w_dtype = shape, weight.dtype
        return y.view(*shape[:-1], N)

    @staticmethod
    def backward(ctx, dy):
        x2, x_int, w_int, rstd, scale, gamma = ctx.saved_tensors
        M = x2.shape[0]
        dy = dy.reshape(M, -1).float()
        dxn = (dy @ w_int.float()) * gamma                      # straight through Round/Clip of W and x̂ s
        dw = (dy / scale[:, None]).t() @ x_int.float()          # (N, K)
        dx, _ = rms_norm_backward(dxn, x2, None, rstd)
        return dx.view(ctx.shape), dw.to(ctx.w_dtype), None


def bitlinear(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Fused BitLinear: x (..., in), latent weight (out, in); as `bitlinear_ref`."""
    return BitLinearFunction.apply(x, weight, eps)


def make_inputs(shape, dtype, device, seed):
    M, K, N = shape
    g = generator(device, seed)
    return {"x": randn((M, K), dtype, device, g), "weight": randn((N, K), dtype, device, g, 0.02), "eps": 1e-5}


KERNEL = register(Kernel(
    name="bitlinear", title="BitNet b1.58 linear: int8 activations x ternary weights (int32 accumulate)",
    reference=bitlinear_ref, fused=bitlinear, make_inputs=make_inputs, dims="tokens x in x out",
    shapes={"cpu": [(64, 128, 96), (37, 100, 45)], "gpu": [(8 * 1024, 768, 3072)]},
))
