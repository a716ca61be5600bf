"""GELU with the tanh approximation (Hendrycks & Gimpel 2016; GPT-2's `gelu_new`), fused fwd and bwd.

    z = sqrt(2/pi) * (x + 0.044715 x^3),   y = 0.5 x (1 + tanh z)
    dy/dx = 0.5 (1 + tanh z) + 0.5 x (1 - tanh^2 z) sqrt(2/pi) (1 + 3 * 0.044715 x^2)

Elementwise: the forward saves only x and the backward recomputes tanh z, so one pass over memory each
way (eager PyTorch's tanh-GELU backward also recomputes from x; the win is in fusing it with neighbours
and in fewer launches). tanh is written as 2 sigmoid(2z) - 1, which Triton lowers on every backend.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from kernels import interpreting
from kernels._harness import Kernel, generator, randn, register
from kernels._triton import tl, triton

SQRT_2_OVER_PI = 0.7978845608028654


def reference(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x, approximate="tanh")


def elementwise_block() -> int:
    return 1 << 15 if interpreting() else 1024


@triton.jit
def _tanh(z):
    return 2.0 * tl.sigmoid(2.0 * z) - 1.0


@triton.jit
def _gelu_fwd(X, Y, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    x = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
    t = _tanh(0.7978845608028654 * (x + 0.044715 * x * x * x))
    tl.store(Y + offs, (0.5 * x * (1.0 + t)).to(Y.dtype.element_ty), mask=mask)


@triton.jit
def _gelu_bwd(DY, X, DX, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    x = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
    dy = tl.load(DY + offs, mask=mask, other=0.0).to(tl.float32)
    t = _tanh(0.7978845608028654 * (x + 0.044715 * x * x * x))
    dz = 0.7978845608028654 * (1.0 + 3.0 * 0.044715 * x * x)
    dx = dy * (0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * dz)
    tl.store(DX + offs, dx.to(DX.dtype.element_ty), mask=mask)


class GeluTanhFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        xc = x.contiguous()
        y = torch.empty_like(xc)
        n, BLOCK = xc.numel(), elementwise_block()
        _gelu_fwd[(triton.cdiv(n, BLOCK),)](xc, y, n, BLOCK=BLOCK)
        ctx.save_for_backward(xc)
        return y

    @staticmethod
    def backward(ctx, dy):
        (x,) = ctx.saved_tensors
        dy = dy.contiguous()
        dx = torch.empty_like(x)
        n, BLOCK = x.numel(), elementwise_block()
        _gelu_bwd[(triton.cdiv(n, BLOCK),)](dy, x, dx, n, BLOCK=BLOCK)
        return dx


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    """Fused tanh-approximate GELU, elementwise."""
    return GeluTanhFunction.apply(x)


def make_inputs(shape, dtype, device, seed):
    return {"x": randn(shape, dtype, device, generator(device, seed), scale=2.0)}


KERNEL = register(Kernel(
    name="gelu", title="GELU, tanh approximation (GPT-2 MLP)", reference=reference, fused=gelu_tanh,
    make_inputs=make_inputs, dims="tokens x 4*hidden",
    shapes={"cpu": [(64, 512), (37, 300)], "gpu": [(8 * 1024, 4 * 768)]},
))
