"""Softmax over the last dimension, row-wise and with a causal mask (attention scores), fused fwd and bwd.

    y_ij = exp(x_ij - max_j x_ij) / sum_j exp(x_ij - max_j x_ij)
Causal: x is (..., T, T) scores of query i against key j; keys j > i are masked (-inf), so y_ij = 0 there
(the mask of causal self-attention, Vaswani et al. 2017). The mask is computed from indices inside the
kernel; no (T, T) mask tensor is built.
Backward (the softmax Jacobian applied row by row):
    dx_ij = y_ij * (dy_ij - sum_k dy_ik * y_ik)
The forward saves only y; the backward needs nothing else.

A row that fits one tile (up to MAX_TILE columns on a GPU: a 1024-key attention row) is held in registers
and read once. A wider one (a 50,257-token vocabulary) would need ~200 registers per thread for one tile and
spill, so it is walked in MAX_TILE-column blocks: an online max and sum (Milakov & Gimelshein 2018), then a
second pass writes exp(x - max) / sum; the backward likewise sums dy * y first, then writes dx.
minGPT's attention (kernels="triton") uses the causal softmax.
"""
from __future__ import annotations

import torch

from kernels import interpreting
from kernels._harness import Kernel, generator, next_pow2, randn, register, row_tiles
from kernels._triton import tl, triton

MAX_TILE = 4096  # columns of a row held in one tile; wider rows are walked in blocks of this many


def reference(x: torch.Tensor) -> torch.Tensor:
    return torch.softmax(x.float(), dim=-1).to(x.dtype)


def reference_causal(x: torch.Tensor) -> torch.Tensor:
    T = x.shape[-1]
    future = torch.ones(T, T, dtype=torch.bool, device=x.device).triu(1)
    return torch.softmax(x.float().masked_fill(future, float("-inf")), dim=-1).to(x.dtype)


@triton.jit
def _softmax_fwd(X, Y, M, N, T, CAUSAL: tl.constexpr, SINGLE: tl.constexpr, BLOCK_M: tl.constexpr,
                 BLOCK_N: tl.constexpr):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    rmask = rows < M
    if SINGLE:  # the whole row in one tile: read once
        cols = tl.arange(0, BLOCK_N)
        mask = rmask[:, None] & (cols < N)[None, :]
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
    else:  # pass 1: online max and sum over blocks of the row; pass 2: write the normalised exponentials
        m = tl.full([BLOCK_M], -1e30, dtype=tl.float32)
        d = tl.zeros([BLOCK_M], dtype=tl.float32)
        for c0 in range(0, N, BLOCK_N):
            cols = c0 + tl.arange(0, BLOCK_N)
            valid = rmask[:, None] & (cols < N)[None, :]
            if CAUSAL:
                valid = valid & (cols[None, :] <= (rows % T)[:, None])
            x = tl.load(X + rows[:, None] * N + cols[None, :], mask=valid, other=float("-inf")).to(tl.float32)
            m_new = tl.maximum(m, tl.max(x, axis=1))
            d = d * tl.exp(m - m_new) + tl.sum(tl.where(valid, tl.exp(x - m_new[:, None]), 0.0), axis=1)
            m = m_new
        d = tl.where(d == 0.0, 1.0, d)
        for c0 in range(0, N, BLOCK_N):
            cols = c0 + tl.arange(0, BLOCK_N)
            mask = rmask[:, None] & (cols < N)[None, :]
            valid = mask
            if CAUSAL:
                valid = valid & (cols[None, :] <= (rows % T)[:, None])
            offs = rows[:, None] * N + cols[None, :]
            x = tl.load(X + offs, mask=valid, other=float("-inf")).to(tl.float32)
            y = tl.where(valid, tl.exp(x - m[:, None]), 0.0) / d[:, None]
            tl.store(Y + offs, y.to(Y.dtype.element_ty), mask=mask)


@triton.jit
def _softmax_bwd(DY, Y, DX, M, N, SINGLE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    rmask = rows < M
    if SINGLE:
        cols = tl.arange(0, BLOCK_N)
        mask = rmask[:, None] & (cols < N)[None, :]
        offs = rows[:, None] * N + cols[None, :]
        y = tl.load(Y + offs, mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(DY + offs, mask=mask, other=0.0).to(tl.float32)
        dot = tl.sum(dy * y, axis=1)
        dx = y * (dy - dot[:, None])  # masked entries have y = 0, so their gradient is exactly 0
        tl.store(DX + offs, dx.to(DX.dtype.element_ty), mask=mask)
    else:
        dot = tl.zeros([BLOCK_M], dtype=tl.float32)
        for c0 in range(0, N, BLOCK_N):
            cols = c0 + tl.arange(0, BLOCK_N)
            mask = rmask[:, None] & (cols < N)[None, :]
            offs = rows[:, None] * N + cols[None, :]
            y = tl.load(Y + offs, mask=mask, other=0.0).to(tl.float32)
            dy = tl.load(DY + offs, mask=mask, other=0.0).to(tl.float32)
            dot += tl.sum(dy * y, axis=1)
        for c0 in range(0, N, BLOCK_N):
            cols = c0 + tl.arange(0, BLOCK_N)
            mask = rmask[:, None] & (cols < N)[None, :]
            offs = rows[:, None] * N + cols[None, :]
            y = tl.load(Y + offs, mask=mask, other=0.0).to(tl.float32)
            dy = tl.load(DY + offs, mask=mask, other=0.0).to(tl.float32)
            tl.store(DX + offs, (y * (dy - dot[:, None])).to(DX.dtype.element_ty), mask=mask)


def _tiles(M: int, N: int) -> tuple[int, int, int, bool]:
    """(BLOCK_M, BLOCK_N, num_warps, whole row in one tile) for rows of N."""
    if next_pow2(N) <= MAX_TILE:
        BLOCK_M, BLOCK_N, warps = row_tiles(M, N)
        return BLOCK_M, BLOCK_N, warps, True
    # the interpreter pays per block operation: a few rows per program there, one row per program on a GPU
    return (4 if interpreting() else 1), MAX_TILE, 8, False


class SoftmaxFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, causal):
        shape = x.shape
        if causal and (x.dim() < 2 or shape[-1] != shape[-2]):
            raise ValueError(f"causal softmax needs square (..., T, T) scores, got {tuple(shape)}")
        x2 = x.reshape(-1, shape[-1]).contiguous()
        M, N = x2.shape
        y = torch.empty_like(x2)
        BLOCK_M, BLOCK_N, warps, single = _tiles(M, N)
        _softmax_fwd[(triton.cdiv(M, BLOCK_M),)](x2, y, M, N, N, CAUSAL=causal, SINGLE=single, BLOCK_M=BLOCK_M,
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
        BLOCK_M, BLOCK_N, warps, single = _tiles(M, N)
        _softmax_bwd[(triton.cdiv(M, BLOCK_M),)](dy, y, dx, M, N, SINGLE=single, BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N,
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
