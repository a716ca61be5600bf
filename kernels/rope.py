"""Rotary position embedding (Su et al. 2021, RoFormer), rotate-half layout (GPT-NeoX, LLaMA), fused.

For position t and pair index i < D/2, theta_i = base^(-2i/D), and x = [x1, x2] split into halves:
    y1 = x1 cos(t theta) - x2 sin(t theta)
    y2 = x2 cos(t theta) + x1 sin(t theta)
The rotation is orthogonal, so the backward is the rotation by -t theta:
    dx1 = dy1 cos + dy2 sin,   dx2 = dy2 cos - dy1 sin
One kernel serves both directions (the sign of sin is a compile-time flag); nothing is saved but cos/sin.
Layout: x (B, T, H, D) as it comes out of the q/k projection, cos/sin (T, D/2).
"""
from __future__ import annotations

import torch

from kernels._harness import Kernel, generator, randn, register, row_tiles
from kernels._triton import tl, triton


def rope_cache(T: int, D: int, base: float = 10000.0, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin (T, D/2) of t * theta_i, theta_i = base^(-2i/D)."""
    theta = base ** (-torch.arange(0, D, 2, device=device, dtype=torch.float32) / D)
    angles = torch.outer(torch.arange(T, device=device, dtype=torch.float32), theta)
    return angles.cos(), angles.sin()


def rope_pairs(x: torch.Tensor, pos: torch.Tensor, base: float = 10000.0) -> torch.Tensor:
    """The same rotation in RoFormer's own layout, over the pairs (x0, x1), (x2, x3), ... of x (B, H, T, D) at
    positions pos (T,): what BitNet and RetNet (xPos's Θ, without its length-extrapolation scale) use.
    PyTorch only; the kernel below takes the rotate-half layout."""
    d = x.size(-1)
    inv_freq = 1.0 / (base ** (torch.arange(0, d, 2, device=x.device, dtype=torch.float32) / d))
    ang = pos.float()[:, None] * inv_freq[None, :]                  # (T, D/2)
    cos, sin = ang.cos().to(x.dtype), ang.sin().to(x.dtype)
    x1, x2 = x[..., 0::2], x[..., 1::2]
    return torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).flatten(-2)


def reference(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.float().chunk(2, dim=-1)              # (B, T, H, D/2) each
    c, s = cos[:, None, :], sin[:, None, :]          # (T, 1, D/2): broadcast over batch and heads
    return torch.cat([x1 * c - x2 * s, x2 * c + x1 * s], dim=-1).to(x.dtype)


@triton.jit
def _rope(X, COS, SIN, Y, R, T, H, HALF, BACKWARD: tl.constexpr, BLOCK_R: tl.constexpr,
          BLOCK_C: tl.constexpr):
    # one tile = BLOCK_R (batch, position) rows x all H * D/2 rotation pairs of each row
    rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.arange(0, BLOCK_C)
    h, i = cols // HALF, cols % HALF
    mask = (rows < R)[:, None] & (cols < H * HALF)[None, :]
    x1_off = rows[:, None] * (H * 2 * HALF) + (h * 2 * HALF + i)[None, :]
    t = rows % T
    cs_off = t[:, None] * HALF + i[None, :]
    c = tl.load(COS + cs_off, mask=mask, other=0.0).to(tl.float32)
    s = tl.load(SIN + cs_off, mask=mask, other=0.0).to(tl.float32)
    if BACKWARD:
        s = -s
    x1 = tl.load(X + x1_off, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(X + x1_off + HALF, mask=mask, other=0.0).to(tl.float32)
    tl.store(Y + x1_off, (x1 * c - x2 * s).to(Y.dtype.element_ty), mask=mask)
    tl.store(Y + x1_off + HALF, (x2 * c + x1 * s).to(Y.dtype.element_ty), mask=mask)


def _launch(x, cos, sin, backward: bool):
    B, T, H, D = x.shape
    if D % 2:
        raise ValueError(f"rope: head dim {D} must be even")
    if cos.shape != (T, D // 2) or sin.shape != (T, D // 2):
        raise ValueError(f"rope: cos/sin must be (T, D/2) = ({T}, {D // 2}), got {tuple(cos.shape)}")
    x = x.contiguous()
    y = torch.empty_like(x)
    R = B * T
    BLOCK_R, BLOCK_C, warps = row_tiles(R, H * D // 2)
    _rope[(triton.cdiv(R, BLOCK_R),)](x, cos.contiguous(), sin.contiguous(), y, R, T, H, D // 2,
                                      BACKWARD=backward, BLOCK_R=BLOCK_R, BLOCK_C=BLOCK_C, num_warps=warps)
    return y


class RoPEFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, cos, sin):
        ctx.save_for_backward(cos, sin)
        return _launch(x, cos, sin, backward=False)

    @staticmethod
    def backward(ctx, dy):
        cos, sin = ctx.saved_tensors
        return _launch(dy, cos, sin, backward=True), None, None


def rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x (B, T, H, D) by position: cos/sin (T, D/2) from `rope_cache`."""
    return RoPEFunction.apply(x, cos, sin)


def make_inputs(shape, dtype, device, seed):
    B, T, H, D = shape
    cos, sin = rope_cache(T, D, device=device)
    return {"x": randn(shape, dtype, device, generator(device, seed)), "cos": cos, "sin": sin}


KERNEL = register(Kernel(
    name="rope", title="rotary position embedding, rotate-half layout", reference=reference, fused=rope,
    make_inputs=make_inputs, dims="batch x T x heads x head_dim",
    shapes={"cpu": [(2, 32, 4, 32), (1, 19, 3, 22)], "gpu": [(8, 1024, 12, 64)]},
))
