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
Backward (straight-through, as the reference), three Triton kernels:
    4. dx̂ = γ dy W_int                              tiles of (tokens, in), the loop over out
    5. dW  = (dy / s)^T x_int                        tiles of (out, in), the loop over tokens; the 1/s of each
                                                     token is applied as its dy rows are loaded
    6. dx  = rstd (dx̂ - x̂ mean(dx̂ x̂))              kernels/rmsnorm.py's backward, without gain
The int8 operands the forward saved (W_int, x_int) are read as int8 and widened in registers, exactly (every
value is an integer below 2^8), to the products' dtype: no fp32 copies of W_int (out x in x 4 bytes) and x_int
(tokens x in x 4 bytes) are made, which two cuBLAS GEMMs would need, and dy / s is never written out. The
products accumulate in fp32, their operands in the dtype autocast had when the forward ran (bf16 on a GPU
run: dy is rounded to bf16, as autocast's own matmul gradients are, and the bf16 tensor cores run), else in
dy's dtype; fp32 operands follow torch's fp32 matmul precision (TF32 once a trainer on CUDA has set it,
IEEE fp32 otherwise, as the reference's fp32 GEMMs would).
Rounding is half-to-even, as torch.round, so the kernel and the reference quantise identically.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from kernels import interpreting
from kernels._harness import Kernel, generator, next_pow2, randn, register, row_tiles
from kernels._triton import dot, tl, triton
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


@triton.jit
def _grad_xn(DY, WQ, GAMMA, DXN, M, N, K, PREC: tl.constexpr, UPCAST: tl.constexpr, BLOCK_M: tl.constexpr,
             BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """dx̂ (M, K) fp32 = γ · dy (M, N) @ W_int (N, K)."""
    pid_m, pid_k = tl.program_id(0), tl.program_id(1)
    rm = pid_m.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    rk = pid_k.to(tl.int64) * BLOCK_K + tl.arange(0, BLOCK_K)
    rn = tl.arange(0, BLOCK_N)
    acc = tl.zeros([BLOCK_M, BLOCK_K], dtype=tl.float32)
    for n0 in range(0, N, BLOCK_N):
        nn = n0 + rn
        dy = tl.load(DY + rm[:, None] * N + nn[None, :], mask=(rm < M)[:, None] & (nn < N)[None, :], other=0.0)
        w = tl.load(WQ + nn[:, None] * K + rk[None, :], mask=(nn < N)[:, None] & (rk < K)[None, :], other=0)
        if UPCAST:  # (the interpreter also mis-converts int8 to bf16: straight to fp32 there)
            w = w.to(tl.float32)
        acc += dot(dy, w.to(dy.dtype), PREC, UPCAST)  # {-1, 0, 1}: exact in any float dtype
    tl.store(DXN + rm[:, None] * K + rk[None, :], acc * tl.load(GAMMA),
             mask=(rm < M)[:, None] & (rk < K)[None, :])


@triton.jit
def _grad_w(DY, XQ, SCALE, DW, M, N, K, PREC: tl.constexpr, UPCAST: tl.constexpr, BLOCK_M: tl.constexpr,
            BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """dW (N, K) fp32 = (dy / s)^T (N, M) @ x_int (M, K)."""
    pid_n, pid_k = tl.program_id(0), tl.program_id(1)
    rn = pid_n.to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = pid_k.to(tl.int64) * BLOCK_K + tl.arange(0, BLOCK_K)
    rm = tl.arange(0, BLOCK_M)
    acc = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.float32)
    for m0 in range(0, M, BLOCK_M):
        mm = m0 + rm
        mmask = mm < M
        dy = tl.load(DY + mm[:, None] * N + rn[None, :], mask=mmask[:, None] & (rn < N)[None, :], other=0.0)
        s = tl.load(SCALE + mm, mask=mmask, other=1.0)
        dys = (dy.to(tl.float32) / s[:, None]).to(dy.dtype)
        x = tl.load(XQ + mm[:, None] * K + rk[None, :], mask=mmask[:, None] & (rk < K)[None, :], other=0)
        if UPCAST:
            x = x.to(tl.float32)
        acc += dot(tl.trans(dys), x.to(dy.dtype), PREC, UPCAST)  # int8 values: exact in bf16 and fp32
    tl.store(DW + rn[:, None] * K + rk[None, :], acc, mask=(rn < N)[:, None] & (rk < K)[None, :])


def _bwd_tiles(M: int, N: int, K: int) -> tuple[int, int, int]:
    if interpreting():
        return min(next_pow2(M), 64), min(next_pow2(N), 64), min(next_pow2(K), 128)
    return 64, 64, 64


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
        kind = x.device.type
        on = kind in ("cuda", "cpu") and torch.is_autocast_enabled(kind)
        ctx.amp_dtype = torch.get_autocast_dtype(kind) if on else None
        return y.view(*shape[:-1], N)

    @staticmethod
    def backward(ctx, dy):
        x2, x_int, w_int, rstd, scale, gamma = ctx.saved_tensors
        M, K = x2.shape
        N = w_int.shape[0]
        dy = dy.reshape(M, N).to(ctx.amp_dtype or dy.dtype).contiguous()
        # fp32 operands: TF32 where torch's fp32 matmuls use it (kernels/integrate.py tf32_matmuls); 16-bit
        # operands ignore PREC
        prec = "ieee" if torch.get_float32_matmul_precision() == "highest" else "tf32"
        upcast = interpreting() and dy.dtype != torch.float32
        BM, BN, BK = _bwd_tiles(M, N, K)
        dxn = torch.empty(M, K, device=dy.device, dtype=torch.float32)
        _grad_xn[(triton.cdiv(M, BM), triton.cdiv(K, BK))](dy, w_int, gamma, dxn, M, N, K, PREC=prec, UPCAST=upcast,
                                                          BLOCK_M=BM, BLOCK_N=BN, BLOCK_K=BK, num_warps=4)
        dw = torch.empty(N, K, device=dy.device, dtype=torch.float32)
        _grad_w[(triton.cdiv(N, BN), triton.cdiv(K, BK))](dy, x_int, scale, dw, M, N, K, PREC=prec, UPCAST=upcast,
                                                         BLOCK_M=BM, BLOCK_N=BN, BLOCK_K=BK, num_warps=4)
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
