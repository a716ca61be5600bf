"""Softmax over the last dimension, row-wise and with a causal mask (attention scores), fused fwd and bwd.

    y_ij = exp(x_ij - max_j x_ij) / sum_j exp(x_ij - max_j x_ij)
Causal: x is (..., T, T) scores of query i against key j; keys j > i are masked (-inf), so y_ij = 0 there
(the mask of causal self-attention, Vaswani et al. 2017). The mask is computed from indices inside the
kernel; no (T, T) mask tensor is built.
Backward (the softmax Jacobian applied row by row):
    dx_ij = y_ij * (dy_ij - sum_k dy_ik * y_ik)
The forward saves only y; the backward needs nothing else.
"""
from __future__ import annotations

import torch

from kernels._harness import Kernel, generator, randn, register, row_tiles
from kernels._triton import tl, triton


def reference(x: torch.Tensor) -> torch.Tensor:
    return torch.softmax(x.float(), dim=-1).to(x.dtype)


def reference_causal(x: torch.Tensor) -> torch.Tensor:
    T = x.shape[-1]
    future = torch.ones(T, T, dtype=torch.bool, device=x.device).triu(1)
    return torch.softmax(x.float().masked_fill(future, float("-inf")), dim=-1).to(x.dtype)


@triton.jit
def _softmax_fwd(X, Y, M, N, T, CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_N)
    mask = (rows < M)[:, None] & (cols < N)[None, :]
    offs = rows[:, None] * N + cols[None, :]
    valid = mask
    if CAUSAL:  # row r is query (r mod T); it sees keys 0..(r mod T)
        valid = valid & (cols[None, :] <= (rows % T)[:, None])
    x = tl.load(X + offs, mask=valid, other=float("-inf")).to(tl.float32)
    m = tl.max(x, axis=1)
    m = tl.where(m == float("-inf"), 0.0, m)  # padding rows: keep exp() finite
    e = tl.where(valid, tl.exp(x - m[:, None]), 0.0)
    d = tl.sum(e, axis=1)
    y = e / tl.where(d == 0.0, 1.0, d)[:, None]
    tl.store(Y + offs, y.to(Y.dtype.element_ty), mask=mask)


@triton.jit
def _softmax_bwd(DY, Y, DX, M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_N)
    mask = (rows < M)[:, None] & (cols < N)[None, :]
    offs = rows[:, None] * N + cols[None, :]
    y = tl.load(Y + offs, mask=mask, other=0.0).to(tl.float32)
    dy = tl.load(DY + offs, mask=mask, other=0.0).to(tl.float32)
    dot = tl.sum(dy * y, axis=1)
    dx = y * (dy - dot[:, None])  # masked entries have y = 0, so their gradient is exactly 0
    tl.store(DX + offs, dx.to(DX.dtype.element_ty), mask=mask)


class SoftmaxFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, causal):
        shape = x.shape
        if causal and (x.dim() < 2 or shape[-1] != shape[-2]):
            raise ValueError(f"causal softmax needs square (..., T, T) scores, got {tuple(shape)}")
        x2 = x.reshape(-1, shape[-1]).contiguous()
        M, N = x2.shape
        y = torch.empty_like(x2)
        BLOCK_M, BLOCK_N, warps = row_tiles(M, N)
        _softmax_fwd[(triton.cdiv(M, BLOCK_M),)](x2, y, M, N, N, CAUSAL=causal, BLOCK_M=BLOCK_M,
                                                 BLOCK_N=BLOCK_N, num_warps=warps)
        ctx.save_for_backward(y)
        return y.view(shape)

    @staticmethod
    def backward(ctx, dy):
        (y,) = ctx.saved_tensors
        M, N = y.shape
        shape = dy.shape
        dy = dy.reshape(M, N).contiguous()
        dx = torch.empty_like(y)
        BLOCK_M, BLOCK_N, warps = row_tiles(M, N)
        _softmax_bwd[(triton.cdiv(M, BLOCK_M),)](dy, y, dx, M, N, BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N,
                                                 num_warps=warps)
        return dx.view(shape), None


def softmax(x: torch.Tensor) -> torch.Tensor:
    """Fused softmax over the last dimension."""
    return SoftmaxFunction.apply(x, False)


def causal_softmax(x: torch.Tensor) -> torch.Tensor:
    """Fused softmax of (..., T, T) attention scores with keys after the query masked out."""
    return SoftmaxFunction.apply(x, True)


def make_inputs(shape, dtype, device, seed):
    return {"x": randn(shape, dtype, device, generator(device, seed), scale=3.0)}


KERNEL = register(Kernel(
    name="softmax", title="row-wise softmax", reference=reference, fused=softmax, make_inputs=make_inputs,
    dims="rows x cols", shapes={"cpu": [(64, 256), (37, 1000)], "gpu": [(8 * 1024, 50257), (8 * 12 * 1024, 1024)]},
))
KERNEL_CAUSAL = register(Kernel(
    name="softmax_causal", title="causal masked softmax of (B, H, T, T) attention scores",
    reference=reference_causal, fused=causal_softmax, make_inputs=make_inputs, dims="batch x heads x T x T",
    shapes={"cpu": [(2, 2, 32, 32), (1, 3, 19, 19)], "gpu": [(8, 12, 1024, 1024)]},
))
