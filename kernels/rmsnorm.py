"""RMSNorm (Zhang & Sennrich 2019), fused forward and backward.

    rstd = 1 / sqrt(mean(x^2) + eps)              per row of x (M, N)
    y    = x * rstd * w
Backward, with x_hat = x * rstd and g = dy * w:
    dx = rstd * (g - x_hat * mean(g * x_hat))
    dw = sum over rows of dy * x_hat

The forward keeps only rstd (M floats) for the backward. dw is reduced in two stages: each program of the
backward strides over row tiles and accumulates its own fp32 partial (programs, N); the partials are
summed afterwards (deterministic, no atomics), as in Liger-Kernel's rms_norm.
"""
from __future__ import annotations

import torch

from kernels._harness import Kernel, generator, n_programs, randn, register, row_tiles
from kernels._triton import tl, triton


def reference(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    xf = x.float()
    y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return (y * weight.float()).to(x.dtype)


@triton.jit
def _rmsnorm_fwd(X, W, Y, RSTD, M, N, eps, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_N)
    rmask, cmask = rows < M, cols < N
    mask = rmask[:, None] & cmask[None, :]
    offs = rows[:, None] * N + cols[None, :]
    x = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
    rstd = 1.0 / tl.sqrt(tl.sum(x * x, axis=1) / N + eps)
    w = tl.load(W + cols, mask=cmask, other=0.0).to(tl.float32)
    y = x * rstd[:, None] * w[None, :]
    tl.store(Y + offs, y.to(Y.dtype.element_ty), mask=mask)
    tl.store(RSTD + rows, rstd, mask=rmask)


@triton.jit
def _rmsnorm_bwd(DY, X, W, RSTD, DX, DW, M, N, HAS_WEIGHT: tl.constexpr, BLOCK_M: tl.constexpr,
                 BLOCK_N: tl.constexpr):
    pid, n_prog = tl.program_id(0), tl.num_programs(0)
    cols = tl.arange(0, BLOCK_N)
    cmask = cols < N
    if HAS_WEIGHT:
        w = tl.load(W + cols, mask=cmask, other=0.0).to(tl.float32)
    else:  # the RMSNorm without gain (BitLinear's): w = 1, no dw
        w = tl.full([BLOCK_N], 1.0, dtype=tl.float32)
    dw = tl.zeros([BLOCK_N], dtype=tl.float32)
    for start in range(pid * BLOCK_M, M, n_prog * BLOCK_M):
        rows = start + tl.arange(0, BLOCK_M).to(tl.int64)
        rmask = rows < M
        mask = rmask[:, None] & cmask[None, :]
        offs = rows[:, None] * N + cols[None, :]
        x = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(DY + offs, mask=mask, other=0.0).to(tl.float32)
        rstd = tl.load(RSTD + rows, mask=rmask, other=0.0)
        x_hat = x * rstd[:, None]
        g = dy * w[None, :]
        c = tl.sum(g * x_hat, axis=1) / N
        dx = (g - x_hat * c[:, None]) * rstd[:, None]
        tl.store(DX + offs, dx.to(DX.dtype.element_ty), mask=mask)
        if HAS_WEIGHT:
            dw += tl.sum(dy * x_hat, axis=0)
    if HAS_WEIGHT:
        tl.store(DW + pid * N + cols, dw, mask=cmask)


def rms_norm_backward(dy2: torch.Tensor, x2: torch.Tensor, weight: torch.Tensor | None, rstd: torch.Tensor):
    """dx (M, N) and dw (N,) of y = x * rstd * w over rows x2 (M, N), given dy2 (M, N) and the forward's rstd
    (M,). weight None: the RMSNorm without gain (BitLinear's), and dw None."""
    M, N = x2.shape
    dx = torch.empty_like(x2)
    BLOCK_M, BLOCK_N, warps = row_tiles(M, N)
    progs = n_programs(triton.cdiv(M, BLOCK_M), x2.device)
    has_weight = weight is not None
    dw = torch.empty(progs, N, device=x2.device, dtype=torch.float32) if has_weight else None
    _rmsnorm_bwd[(progs,)](dy2, x2, weight.contiguous() if has_weight else rstd, rstd, dx,
                           dw if has_weight else rstd, M, N, HAS_WEIGHT=has_weight, BLOCK_M=BLOCK_M,
                           BLOCK_N=BLOCK_N, num_warps=warps)
    return dx, dw.sum(0).to(weight.dtype) if has_weight else None


class RMSNormFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, eps):
        shape = x.shape
        x2 = x.reshape(-1, shape[-1]).contiguous()
        M, N = x2.shape
        y = torch.empty_like(x2)
        rstd = torch.empty(M, device=x.device, dtype=torch.float32)
        BLOCK_M, BLOCK_N, warps = row_tiles(M, N)
        _rmsnorm_fwd[(triton.cdiv(M, BLOCK_M),)](x2, weight.contiguous(), y, rstd, M, N, eps,
                                                 BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, num_warps=warps)
        ctx.save_for_backward(x2, weight, rstd)
        ctx.shape = shape
        return y.view(shape)

    @staticmethod
    def backward(ctx, dy):
        x2, weight, rstd = ctx.saved_tensors
        dx, dw = rms_norm_backward(dy.reshape(x2.shape).contiguous(), x2, weight, rstd)
        return dx.view(ctx.shape), dw, None


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Fused RMSNorm over the last dimension of x (..., N) with weight (N,)."""
    return RMSNormFunction.apply(x, weight, eps)


def make_inputs(shape, dtype, device, seed):
    M, N = shape
    g = generator(device, seed)
    return {"x": randn((M, N), dtype, device, g),
            "weight": randn((N,), dtype, device, g, scale=0.1).detach().add_(1.0).requires_grad_(),
            "eps": 1e-6}


KERNEL = register(Kernel(
    name="rmsnorm", title="RMSNorm: x * rsqrt(mean(x^2) + eps) * w", reference=reference, fused=rms_norm,
    make_inputs=make_inputs, dims="tokens x hidden",
    shapes={"cpu": [(64, 128), (37, 100)], "gpu": [(8 * 1024, 768), (8 * 1024, 4096)]},
))
