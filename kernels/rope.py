"""Rotary position embedding (Su et al. 2021, RoFormer), fused, in both layouts models use.

For position t and pair index i < D/2, theta_i = base^(-2i/D), each pair (a, b) of x turns by t theta_i:
    a' = a cos(t theta) - b sin(t theta)
    b' = b cos(t theta) + a sin(t theta)
The pairs are either
    interleaved   (x0, x1), (x2, x3), ...       RoFormer's own layout, BitNet's and RetNet's (`rope_pairs`)
    rotate-half   (x_i, x_{i + D/2})            GPT-NeoX's and LLaMA's (`rope`)
The rotation is orthogonal, so the backward is the rotation by -t theta:
    da = da' cos + db' sin,   db = db' cos - da' sin
One kernel serves both layouts and both directions (INTERLEAVED and BACKWARD are compile-time flags);
nothing is saved but cos/sin. It walks rows of D (one head's vector at one position) and finds a row's
position from its index, t = (row // T_STRIDE) % T:
    rope_pairs_fused(x, pos)    x (..., T, D), e.g. (B, H, T, D) after the heads are split: T_STRIDE 1
    rope(x, cos, sin)           x (B, T, H, D) as it comes out of the q/k projection: T_STRIDE H
"""
from __future__ import annotations

import torch

from kernels._harness import Kernel, generator, randn, register, row_tiles
from kernels._triton import tl, triton


def rope_cache(T: int, D: int, base: float = 10000.0, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin (T, D/2) of t * theta_i, theta_i = base^(-2i/D)."""
    return angles_cos_sin(torch.arange(T, device=device), D, base)


def angles_cos_sin(pos: torch.Tensor, D: int, base: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin (T, D/2) fp32 of pos_t * theta_i for positions pos (T,)."""
    theta = base ** (-torch.arange(0, D, 2, device=pos.device, dtype=torch.float32) / D)
    angles = pos.float()[:, None] * theta[None, :]
    return angles.cos(), angles.sin()


def rope_pairs(x: torch.Tensor, pos: torch.Tensor, base: float = 10000.0) -> torch.Tensor:
    """The rotation in RoFormer's layout, over the pairs (x0, x1), (x2, x3), ... of x (..., T, D) at positions
    pos (T,): what BitNet and RetNet (xPos's Θ, without its length-extrapolation scale) use. PyTorch."""
    cos, sin = angles_cos_sin(pos, x.size(-1), base)
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    x1, x2 = x[..., 0::2], x[..., 1::2]
    return torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).flatten(-2)


def reference(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate-half layout: x (B, T, H, D), cos/sin (T, D/2)."""
    x1, x2 = x.float().chunk(2, dim=-1)              # (B, T, H, D/2) each
    c, s = cos[:, None, :], sin[:, None, :]          # (T, 1, D/2): broadcast over batch and heads
    return torch.cat([x1 * c - x2 * s, x2 * c + x1 * s], dim=-1).to(x.dtype)


@triton.jit
def _rope(X, COS, SIN, Y, R, T, T_STRIDE, HALF, INTERLEAVED: tl.constexpr, BACKWARD: tl.constexpr,
          BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    # one tile = BLOCK_R rows (a head's vector at a position) x the HALF rotation pairs of each row
    rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    i = tl.arange(0, BLOCK_C)
    mask = (rows < R)[:, None] & (i < HALF)[None, :]
    if INTERLEAVED:
        a_off = rows[:, None] * (2 * HALF) + (2 * i)[None, :]
        b_off = a_off + 1
    else:
        a_off = rows[:, None] * (2 * HALF) + i[None, :]
        b_off = a_off + HALF
    t = (rows // T_STRIDE) % T
    cs_off = t[:, None] * HALF + i[None, :]
    c = tl.load(COS + cs_off, mask=mask, other=0.0).to(tl.float32)
    s = tl.load(SIN + cs_off, mask=mask, other=0.0).to(tl.float32)
    if BACKWARD:
        s = -s
    a = tl.load(X + a_off, mask=mask, other=0.0).to(tl.float32)
    b = tl.load(X + b_off, mask=mask, other=0.0).to(tl.float32)
    tl.store(Y + a_off, (a * c - b * s).to(Y.dtype.element_ty), mask=mask)
    tl.store(Y + b_off, (b * c + a * s).to(Y.dtype.element_ty), mask=mask)


def _launch(x, cos, sin, t_stride: int, interleaved: bool, backward: bool):
    D = x.shape[-1]
    x = x.contiguous()
    y = torch.empty_like(x)
    R = x.numel() // D
    BLOCK_R, BLOCK_C, warps = row_tiles(R, D // 2)
    _rope[(triton.cdiv(R, BLOCK_R),)](x, cos.contiguous(), sin.contiguous(), y, R, cos.shape[0], t_stride, D // 2,
                                      INTERLEAVED=interleaved, BACKWARD=backward, BLOCK_R=BLOCK_R, BLOCK_C=BLOCK_C,
                                      num_warps=warps)
    return y


class RoPEFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, cos, sin, t_stride, interleaved):
        ctx.save_for_backward(cos, sin)
        ctx.t_stride, ctx.interleaved = t_stride, interleaved
        return _launch(x, cos, sin, t_stride, interleaved, backward=False)

    @staticmethod
    def backward(ctx, dy):
        cos, sin = ctx.saved_tensors
        return _launch(dy, cos, sin, ctx.t_stride, ctx.interleaved, backward=True), None, None, None, None


def _check(x, cos, sin, T: int, what: str):
    D = x.shape[-1]
    if D % 2:
        raise ValueError(f"rope: head dim {D} must be even")
    if cos.shape != (T, D // 2) or sin.shape != (T, D // 2):
        raise ValueError(f"rope: cos/sin must be (T, D/2) = ({T}, {D // 2}) for {what}, got {tuple(cos.shape)}")


def rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x (B, T, H, D) by position, rotate-half layout: cos/sin (T, D/2) from `rope_cache`."""
    B, T, H, D = x.shape
    _check(x, cos, sin, T, "x (B, T, H, D)")
    return RoPEFunction.apply(x, cos, sin, H, False)


def rope_pairs_fused(x: torch.Tensor, pos: torch.Tensor, base: float = 10000.0) -> torch.Tensor:
    """`rope_pairs` through the kernel: x (..., T, D) at positions pos (T,), interleaved pairs."""
    cos, sin = angles_cos_sin(pos, x.shape[-1], base)
    _check(x, cos, sin, x.shape[-2], "x (..., T, D)")
    return RoPEFunction.apply(x, cos, sin, 1, True)


def make_inputs(shape, dtype, device, seed):
    B, H, T, D = shape
    return {"x": randn(shape, dtype, device, generator(device, seed)), "pos": torch.arange(T, device=device)}


KERNEL = register(Kernel(
    name="rope", title="rotary position embedding, RoFormer's interleaved pairs (BitNet, RetNet)",
    reference=rope_pairs, fused=rope_pairs_fused, make_inputs=make_inputs, dims="batch x heads x T x head_dim",
    shapes={"cpu": [(2, 4, 32, 32), (1, 3, 19, 22)], "gpu": [(64, 6, 256, 64)]},
))
