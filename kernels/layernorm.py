"""LayerNorm (Ba et al. 2016), fused forward and backward with weight and (optional) bias gradients.

    mu = mean(x),  rstd = 1 / sqrt(var(x) + eps)          per row of x (M, N), biased variance
    x_hat = (x - mu) * rstd,   y = x_hat * w + b
Backward, with g = dy * w:
    dx = rstd * (g - mean(g) - x_hat * mean(g * x_hat))
    dw = sum over rows of dy * x_hat,   db = sum over rows of dy

The forward saves mean and rstd (2M floats); dw and db are reduced through per-program fp32 partials,
like the backward of Triton's layer-norm tutorial and Liger-Kernel's layer_norm.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from kernels._harness import Kernel, generator, n_programs, randn, register, row_tiles
from kernels._triton import tl, triton


def reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
              eps: float = 1e-5) -> torch.Tensor:
    return F.layer_norm(x, weight.shape, weight, bias, eps)


@triton.jit
def _layernorm_fwd(X, W, B, Y, MEAN, RSTD, M, N, eps, HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr,
                   BLOCK_N: tl.constexpr):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_N)
    rmask, cmask = rows < M, cols < N
    mask = rmask[:, None] & cmask[None, :]
    offs = rows[:, None] * N + cols[None, :]
    x = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
    mean = tl.sum(x, axis=1) / N
    xc = tl.where(mask, x - mean[:, None], 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(xc * xc, axis=1) / N + eps)
    w = tl.load(W + cols, mask=cmask, other=0.0).to(tl.float32)
    y = xc * rstd[:, None] * w[None, :]
    if HAS_BIAS:
        y += tl.load(B + cols, mask=cmask, other=0.0).to(tl.float32)[None, :]
    tl.store(Y + offs, y.to(Y.dtype.element_ty), mask=mask)
    tl.store(MEAN + rows, mean, mask=rmask)
    tl.store(RSTD + rows, rstd, mask=rmask)


@triton.jit
def _layernorm_bwd(DY, X, W, MEAN, RSTD, DX, DW, DB, M, N, HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr,
                   BLOCK_N: tl.constexpr):
    pid, n_prog = tl.program_id(0), tl.num_programs(0)
    cols = tl.arange(0, BLOCK_N)
    cmask = cols < N
    w = tl.load(W + cols, mask=cmask, other=0.0).to(tl.float32)
    dw = tl.zeros([BLOCK_N], dtype=tl.float32)
    db = tl.zeros([BLOCK_N], dtype=tl.float32)
    for start in range(pid * BLOCK_M, M, n_prog * BLOCK_M):
        rows = start + tl.arange(0, BLOCK_M).to(tl.int64)
        rmask = rows < M
        mask = rmask[:, None] & cmask[None, :]
        offs = rows[:, None] * N + cols[None, :]
        x = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(DY + offs, mask=mask, other=0.0).to(tl.float32)
        mean = tl.load(MEAN + rows, mask=rmask, other=0.0)
        rstd = tl.load(RSTD + rows, mask=rmask, other=0.0)
        x_hat = tl.where(mask, (x - mean[:, None]) * rstd[:, None], 0.0)
        g = dy * w[None, :]
        c1 = tl.sum(g * x_hat, axis=1) / N
        c2 = tl.sum(g, axis=1) / N
        dx = (g - c2[:, None] - x_hat * c1[:, None]) * rstd[:, None]
        tl.store(DX + offs, dx.to(DX.dtype.element_ty), mask=mask)
        dw += tl.sum(dy * x_hat, axis=0)
        db += tl.sum(dy, axis=0)
    tl.store(DW + pid * N + cols, dw, mask=cmask)
    if HAS_BIAS:
        tl.store(DB + pid * N + cols, db, mask=cmask)


class LayerNormFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, eps):
        shape = x.shape
        x2 = x.reshape(-1, shape[-1]).contiguous()
        M, N = x2.shape
        y = torch.empty_like(x2)
        mean = torch.empty(M, device=x.device, dtype=torch.float32)
        rstd = torch.empty(M, device=x.device, dtype=torch.float32)
        BLOCK_M, BLOCK_N, warps = row_tiles(M, N)
        has_bias = bias is not None
        _layernorm_fwd[(triton.cdiv(M, BLOCK_M),)](
            x2, weight.contiguous(), bias.contiguous() if has_bias else weight, y, mean, rstd, M, N, eps,
            HAS_BIAS=has_bias, BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, num_warps=warps)
        ctx.save_for_backward(x2, weight, mean, rstd)
        ctx.shape, ctx.has_bias, ctx.bias_dtype = shape, has_bias, bias.dtype if has_bias else None
        return y.view(shape)

    @staticmethod
    def backward(ctx, dy):
        x2, weight, mean, rstd = ctx.saved_tensors
        M, N = x2.shape
        dy = dy.reshape(M, N).contiguous()
        dx = torch.empty_like(x2)
        BLOCK_M, BLOCK_N, warps = row_tiles(M, N)
        progs = n_programs(triton.cdiv(M, BLOCK_M), x2.device)
        dw = torch.empty(progs, N, device=x2.device, dtype=torch.float32)
        db = torch.empty(progs, N, device=x2.device, dtype=torch.float32) if ctx.has_bias else dw
        _layernorm_bwd[(progs,)](dy, x2, weight.contiguous(), mean, rstd, dx, dw, db, M, N,
                                 HAS_BIAS=ctx.has_bias, BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, num_warps=warps)
        dbias = db.sum(0).to(ctx.bias_dtype) if ctx.has_bias else None
        return dx.view(ctx.shape), dw.sum(0).to(weight.dtype), dbias, None


def layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
               eps: float = 1e-5) -> torch.Tensor:
    """Fused LayerNorm over the last dimension of x (..., N); bias may be None."""
    return LayerNormFunction.apply(x, weight, bias, eps)


def make_inputs(shape, dtype, device, seed):
    M, N = shape
    g = generator(device, seed)
    return {"x": randn((M, N), dtype, device, g, scale=2.0).detach().add_(0.5).requires_grad_(),
            "weight": randn((N,), dtype, device, g, scale=0.1).detach().add_(1.0).requires_grad_(),
            "bias": randn((N,), dtype, device, g, scale=0.1),
            "eps": 1e-5}


KERNEL = register(Kernel(
    name="layernorm", title="LayerNorm: (x - mean) * rstd * w + b, grads for x, w, b", reference=reference,
    fused=layer_norm, make_inputs=make_inputs, dims="tokens x hidden",
    shapes={"cpu": [(64, 128), (37, 100)], "gpu": [(8 * 1024, 768)]},
))
