"""SwiGLU gating (Shazeer 2020, "GLU Variants Improve Transformer"; the LLaMA MLP), fused fwd and bwd.

    out = silu(a) * b,   silu(a) = a * sigmoid(a)          a = x W_gate, b = x W_up
Backward, with s = sigmoid(a):
    da = dy * b * s * (1 + a (1 - s)),   db = dy * silu(a)

Eager PyTorch materialises silu(a) (and keeps it for the backward) before the multiply; the fused op
reads a and b once, writes out once, and the backward recomputes s from a (Liger-Kernel's swiglu).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from kernels._harness import Kernel, generator, randn, register
from kernels._triton import tl, triton
from kernels.gelu import elementwise_block


def reference(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return F.silu(a) * b


@triton.jit
def _swiglu_fwd(A, B, Y, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    a = tl.load(A + offs, mask=mask, other=0.0).to(tl.float32)
    b = tl.load(B + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(Y + offs, (a * tl.sigmoid(a) * b).to(Y.dtype.element_ty), mask=mask)


@triton.jit
def _swiglu_bwd(DY, A, B, DA, DB, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    a = tl.load(A + offs, mask=mask, other=0.0).to(tl.float32)
    b = tl.load(B + offs, mask=mask, other=0.0).to(tl.float32)
    dy = tl.load(DY + offs, mask=mask, other=0.0).to(tl.float32)
    s = tl.sigmoid(a)
    tl.store(DA + offs, (dy * b * s * (1.0 + a * (1.0 - s))).to(DA.dtype.element_ty), mask=mask)
    tl.store(DB + offs, (dy * a * s).to(DB.dtype.element_ty), mask=mask)


class SwiGLUFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a, b):
        if a.shape != b.shape:
            raise ValueError(f"swiglu: gate {tuple(a.shape)} and up {tuple(b.shape)} must have the same shape")
        a, b = a.contiguous(), b.contiguous()
        y = torch.empty_like(a)
        n, BLOCK = a.numel(), elementwise_block()
        _swiglu_fwd[(triton.cdiv(n, BLOCK),)](a, b, y, n, BLOCK=BLOCK)
        ctx.save_for_backward(a, b)
        return y

    @staticmethod
    def backward(ctx, dy):
        a, b = ctx.saved_tensors
        dy = dy.contiguous()
        da, db = torch.empty_like(a), torch.empty_like(b)
        n, BLOCK = a.numel(), elementwise_block()
        _swiglu_bwd[(triton.cdiv(n, BLOCK),)](dy, a, b, da, db, n, BLOCK=BLOCK)
        return da, db


def swiglu(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Fused silu(a) * b (a: gate projection, b: up projection)."""
    return SwiGLUFunction.apply(a, b)


def make_inputs(shape, dtype, device, seed):
    g = generator(device, seed)
    return {"a": randn(shape, dtype, device, g, scale=2.0), "b": randn(shape, dtype, device, g)}


KERNEL = register(Kernel(
    name="swiglu", title="SwiGLU gate: silu(a) * b (LLaMA MLP)", reference=reference, fused=swiglu,
    make_inputs=make_inputs, dims="tokens x ffn",
    shapes={"cpu": [(64, 256), (37, 300)], "gpu": [(8 * 1024, 2048)]},
))
