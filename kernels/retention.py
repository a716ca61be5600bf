"""Retention of RetNet (Sun et al. 2023, section 2.1): the three PyTorch forms and the fused chunkwise Triton
kernel, forward and backward (the fused-chunk form of flash-linear-attention's retention).

One head with decay γ, q, k (T, dk), v (T, dv):
    parallel   (eq. 5):  Retention(X) = (Q Kᵀ ⊙ D) V,   D_nm = γ^(n-m) if n >= m else 0
    recurrent  (eq. 6):  S_n = γ S_n-1 + K_nᵀ V_n;   Retention(X_n) = Q_n S_n
    chunkwise  (eq. 7):  chunks of B tokens, j the position inside a chunk of length L,
                         ξ_j = γ^(j+1), ζ_j = γ^(L-1-j):
        O_[i] = (Q_[i] K_[i]^T ⊙ D) V_[i] + (Q_[i] S_{i-1}) ⊙ ξ        (inside the chunk + the carried state)
        S_i   = γ^L S_{i-1} + (K_[i] ⊙ ζ)^T V_[i]

PyTorch forms, all fp32 (the RetNet model trains with the chunkwise one and generates with the recurrent one):
    retention_parallel(q, k, v, gamma) -> y
    retention_recurrent(q, k, v, gamma, state=None) -> (y, state)
    retention_chunkwise(q, k, v, gamma, chunk=64, state=None) -> (y, state)
        q, k: (B, H, T, dk) (already rotated and scaled); v: (B, H, T, dv); gamma: (H,) decays in (0, 1);
        state: (B, H, dk, dv) or None (zeros); y: (B, H, T, dv). The parallel form starts from zero state.
The fused `retention(q, k, v, gamma, state)` takes the arguments and gives the results of
`retention_recurrent` (gamma is a constant buffer, no gradient).

Forward: one program per (batch x head, block of dv) walks the chunks with S (dk x BLOCK_V) in
registers; every product is a tl.dot. Backward, two sweeps of the same shape:
    forward in time:   dQ_[i] = ((dO V^T) ⊙ D) K + (dO ⊙ ξ) S_{i-1}^T
    backward in time, with dS = dL/dS_i:
        dV_[i] = (K Q^T ⊙ D^T) dO + (K ⊙ ζ) dS
        dK_[i] = ((V dO^T) ⊙ D^T) Q + (V dS^T) ⊙ ζ
        dS    <- γ^L dS + (Q ⊙ ξ)^T dO                        (dS_0 is the gradient of the initial state)
No (T x T) matrix and no per-step state is stored; dq and dk are summed over dv blocks afterwards.
Precision, as flash-linear-attention's fused_chunk retention: every product's operands are in the inputs'
dtype and accumulate in fp32; the state S, the decays and the accumulators stay fp32, and are cast to the
inputs' dtype only as the operand of a product (`b_h.to(b_q.dtype)` in fla). So bf16 inputs run the bf16
tensor cores with fp32 accumulation (the RetNet model feeds bf16 under CUDA bf16 autocast), and fp32 inputs
run IEEE fp32 products (input_precision="ieee"), exact to fp32 rounding.
"""
from __future__ import annotations

import math

import torch

from kernels import interpreting
from kernels._harness import Kernel, generator, next_pow2, randn, register
from kernels._triton import dot, tl, triton


# ---------------------------------------------------------------------------------------------- PyTorch
def decay_mask(gamma, T: int, device=None):
    """D (H, T, T): D_nm = γ^(n-m) for n >= m, else 0."""
    n = torch.arange(T, device=device, dtype=torch.float32)
    diff = n[:, None] - n[None, :]                                          # n - m
    log_d = diff * torch.log(gamma.float())[:, None, None]
    return torch.exp(log_d.masked_fill(diff < 0, -math.inf))


def retention_parallel(q, k, v, gamma):
    """(Q Kᵀ ⊙ D) V: the form that trains like attention (O(T²))."""
    D = decay_mask(gamma, q.size(2), q.device).to(q.dtype)
    return ((q @ k.transpose(-1, -2)) * D) @ v


def retention_recurrent(q, k, v, gamma, state=None):
    """S_n = γ S_n-1 + K_nᵀ V_n;  y_n = Q_n S_n: one token at a time (O(1) per token)."""
    B, H, T, dk = q.shape
    if state is None:
        state = q.new_zeros(B, H, dk, v.size(-1))
    g = gamma.to(q.dtype)[None, :, None, None]
    ys = []
    for n in range(T):
        state = g * state + k[:, :, n, :, None] * v[:, :, n, None, :]
        ys.append((q[:, :, n, None, :] @ state).squeeze(2))
    return torch.stack(ys, dim=2), state


def retention_chunkwise(q, k, v, gamma, chunk: int = 64, state=None):
    """Parallel inside each chunk, recurrent across chunks (O(T · chunk)); the last chunk may be shorter."""
    B, H, T, dk = q.shape
    if state is None:
        state = q.new_zeros(B, H, dk, v.size(-1))
    log_g = torch.log(gamma.float()).to(q.device)[None, :, None, None]      # (1, H, 1, 1)
    ys = []
    for i in range(0, T, chunk):
        qc, kc, vc = q[:, :, i:i + chunk], k[:, :, i:i + chunk], v[:, :, i:i + chunk]
        L = qc.size(2)
        j = torch.arange(L, device=q.device, dtype=torch.float32)[None, None, :, None]
        xi = torch.exp((j + 1) * log_g).to(q.dtype)                          # γ^(j+1): decay of the carried state
        zeta = torch.exp((L - 1 - j) * log_g).to(q.dtype)                    # γ^(L-j-1): decay to the chunk end
        inner = ((qc @ kc.transpose(-1, -2)) * decay_mask(gamma, L, q.device).to(q.dtype)) @ vc
        ys.append(inner + (qc @ state) * xi)
        state = torch.exp(L * log_g).to(q.dtype) * state + kc.transpose(-1, -2) @ (vc * zeta)
    return torch.cat(ys, dim=2), state


# ----------------------------------------------------------------------------------------------- Triton
@triton.jit
def _chunk(pid_bh, t0, T, log_g, kmask, vmask, BT: tl.constexpr):
    """For the chunk starting at t0 of head pid_bh: its rows of the (B*H*T, d) views, the masks of its
    (BT, dk) and (BT, dv) tiles, and ξ, ζ, D and γ^L."""
    js = tl.arange(0, BT)
    rmask = t0 + js < T
    L = tl.sum(rmask.to(tl.float32), axis=0)
    jf = js.to(tl.float32)
    xi = tl.exp((jf + 1.0) * log_g)
    zeta = tl.where(rmask, tl.exp((L - 1.0 - jf) * log_g), 0.0)
    diff = jf[:, None] - jf[None, :]
    D = tl.where(diff >= 0.0, tl.exp(tl.where(diff >= 0.0, diff, 0.0) * log_g), 0.0)
    rows = pid_bh * T + t0 + js
    return rows, rmask[:, None] & kmask[None, :], rmask[:, None] & vmask[None, :], xi, zeta, D, tl.exp(L * log_g)


@triton.jit
def _tile(P, rows, cols, width, mask):
    """The tile (rows x cols) of a row-major matrix `width` wide, in its own dtype."""
    return tl.load(P + rows[:, None] * width + cols[None, :], mask=mask, other=0.0)


@triton.jit
def _ret_fwd(Q, Kx, V, G, S0, O, SOUT, H, T, DK, DV, HAS_S0: tl.constexpr, PREC: tl.constexpr,
             UPCAST: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr):
    pid_bh, pid_v = tl.program_id(0).to(tl.int64), tl.program_id(1)
    log_g = tl.log(tl.load(G + pid_bh % H).to(tl.float32))
    ks, vs = tl.arange(0, BK), pid_v * BV + tl.arange(0, BV)
    kmask, vmask = ks < DK, vs < DV
    s_off = pid_bh * DK * DV + ks[:, None] * DV + vs[None, :]
    dt = Q.dtype.element_ty  # the products' operand dtype; they accumulate in fp32
    if HAS_S0:
        S = tl.load(S0 + s_off, mask=kmask[:, None] & vmask[None, :], other=0.0).to(tl.float32)
    else:
        S = tl.zeros([BK, BV], dtype=tl.float32)
    for t0 in range(0, T, BT):
        rows, qk_mask, v_mask, xi, zeta, D, gL = _chunk(pid_bh, t0, T, log_g, kmask, vmask, BT)
        q, k, v = _tile(Q, rows, ks, DK, qk_mask), _tile(Kx, rows, ks, DK, qk_mask), _tile(V, rows, vs, DV, v_mask)
        A = dot(q, tl.trans(k), PREC, UPCAST) * D
        o = dot(A.to(dt), v, PREC, UPCAST) + dot(q, S.to(dt), PREC, UPCAST) * xi[:, None]
        tl.store(O + rows[:, None] * DV + vs[None, :], o.to(O.dtype.element_ty), mask=v_mask)
        S = S * gL + dot(tl.trans((k * zeta[:, None]).to(dt)), v, PREC, UPCAST)
    tl.store(SOUT + s_off, S, mask=kmask[:, None] & vmask[None, :])


@triton.jit
def _ret_bwd_dq(Q, Kx, V, G, S0, DO, DQ_P, BH, H, T, DK, DV, HAS_S0: tl.constexpr, PREC: tl.constexpr,
                UPCAST: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr):
    pid_bh, pid_v = tl.program_id(0).to(tl.int64), tl.program_id(1)
    log_g = tl.log(tl.load(G + pid_bh % H).to(tl.float32))
    ks, vs = tl.arange(0, BK), pid_v * BV + tl.arange(0, BV)
    kmask, vmask = ks < DK, vs < DV
    dt = Q.dtype.element_ty
    if HAS_S0:
        S = tl.load(S0 + pid_bh * DK * DV + ks[:, None] * DV + vs[None, :],
                    mask=kmask[:, None] & vmask[None, :], other=0.0).to(tl.float32)
    else:
        S = tl.zeros([BK, BV], dtype=tl.float32)
    for t0 in range(0, T, BT):
        rows, qk_mask, v_mask, xi, zeta, D, gL = _chunk(pid_bh, t0, T, log_g, kmask, vmask, BT)
        k, v, do = _tile(Kx, rows, ks, DK, qk_mask), _tile(V, rows, vs, DV, v_mask), _tile(DO, rows, vs, DV, v_mask)
        dA = dot(do, tl.trans(v), PREC, UPCAST) * D
        dq = (dot(dA.to(dt), k, PREC, UPCAST)
              + dot((do * xi[:, None]).to(dt), tl.trans(S.to(dt)), PREC, UPCAST))
        part = (pid_v * BH * T + rows)[:, None] * DK + ks[None, :]
        tl.store(DQ_P + part, dq, mask=qk_mask)
        S = S * gL + dot(tl.trans((k * zeta[:, None]).to(dt)), v, PREC, UPCAST)


@triton.jit
def _ret_bwd_dkv(Q, Kx, V, G, DO, DSOUT, DK_P, DVx, DS0, BH, H, T, DK, DV, n_chunks,
                 HAS_DSOUT: tl.constexpr, PREC: tl.constexpr, UPCAST: tl.constexpr, BT: tl.constexpr,
                 BK: tl.constexpr, BV: tl.constexpr):
    pid_bh, pid_v = tl.program_id(0).to(tl.int64), tl.program_id(1)
    log_g = tl.log(tl.load(G + pid_bh % H).to(tl.float32))
    ks, vs = tl.arange(0, BK), pid_v * BV + tl.arange(0, BV)
    kmask, vmask = ks < DK, vs < DV
    s_off = pid_bh * DK * DV + ks[:, None] * DV + vs[None, :]
    dt = Q.dtype.element_ty
    if HAS_DSOUT:
        dS = tl.load(DSOUT + s_off, mask=kmask[:, None] & vmask[None, :], other=0.0).to(tl.float32)
    else:
        dS = tl.zeros([BK, BV], dtype=tl.float32)
    for ci in range(0, n_chunks):
        rows, qk_mask, v_mask, xi, zeta, D, gL = _chunk(pid_bh, (n_chunks - 1 - ci) * BT, T, log_g, kmask, vmask, BT)
        q, k = _tile(Q, rows, ks, DK, qk_mask), _tile(Kx, rows, ks, DK, qk_mask)
        v, do = _tile(V, rows, vs, DV, v_mask), _tile(DO, rows, vs, DV, v_mask)
        At = dot(k, tl.trans(q), PREC, UPCAST) * tl.trans(D)
        dv = (dot(At.to(dt), do, PREC, UPCAST)
              + dot((k * zeta[:, None]).to(dt), dS.to(dt), PREC, UPCAST))
        dAt = dot(v, tl.trans(do), PREC, UPCAST) * tl.trans(D)
        dk = (dot(dAt.to(dt), q, PREC, UPCAST)
              + dot(v, tl.trans(dS.to(dt)), PREC, UPCAST) * zeta[:, None])
        tl.store(DVx + rows[:, None] * DV + vs[None, :], dv.to(DVx.dtype.element_ty), mask=v_mask)
        tl.store(DK_P + (pid_v * BH * T + rows)[:, None] * DK + ks[None, :], dk, mask=qk_mask)
        dS = dS * gL + dot(tl.trans((q * xi[:, None]).to(dt)), do, PREC, UPCAST)
    tl.store(DS0 + s_off, dS, mask=kmask[:, None] & vmask[None, :])


def _blocks(T: int, dk: int, dv: int, dtype: torch.dtype) -> tuple[int, int, int, int]:
    """(BT, BK, BV, num_warps). A program holds the whole dk (BK) and a BV slice of dv; on a GPU the chunk
    length and slice are what keeps the dkv sweep (q, k, v, dO tiles, two (BT, BT) products and dS) in
    registers: compiled for sm_89 at RetNet's shapes (dk 64, dv 128; `cockpit kernels --compile sm_89`),
    64 x 64 tiles spilled kilobytes per thread and asked for 128-160 KB of shared memory. bf16 operands run at
    BT 16, BV 32, 4 warps; fp32 ones (IEEE products: no tensor cores, more registers each) at BT 16, BV 16,
    8 warps, none spilling."""
    BK = max(16, next_pow2(dk))
    if interpreting():
        return 16, BK, max(16, next_pow2(dv)), 8
    if dtype == torch.float32:
        return 16, BK, 16, 8
    return 16, BK, max(16, min(next_pow2(dv), 32)), 4


class RetentionFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, gamma, state):
        B, H, T, dk = q.shape
        dv = v.shape[-1]
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        gamma = gamma.to(device=q.device, dtype=torch.float32).contiguous()
        BT, BK, BV, warps = _blocks(T, dk, dv, q.dtype)
        if not (q.dtype == k.dtype == v.dtype):
            raise ValueError(f"retention: q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
        prec = "ieee" if q.dtype == torch.float32 else "tf32"  # (fp32 operands only; bf16 ones ignore it)
        upcast = interpreting() and q.dtype != torch.float32
        o = torch.empty_like(v)
        s_out = torch.empty(B, H, dk, dv, device=q.device, dtype=torch.float32)
        has_s0 = state is not None
        s0 = state.contiguous() if has_s0 else s_out
        _ret_fwd[(B * H, triton.cdiv(dv, BV))](q, k, v, gamma, s0, o, s_out, H, T, dk, dv, HAS_S0=has_s0,
                                               PREC=prec, UPCAST=upcast, BT=BT, BK=BK, BV=BV, num_warps=warps)
        ctx.save_for_backward(q, k, v, gamma, *([s0] if has_s0 else []))
        ctx.has_s0, ctx.prec, ctx.upcast, ctx.state_dtype = has_s0, prec, upcast, state.dtype if has_s0 else None
        return o, s_out

    @staticmethod
    def backward(ctx, do, ds_out):
        q, k, v, gamma, *s0 = ctx.saved_tensors
        B, H, T, dk = q.shape
        dv = v.shape[-1]
        BT, BK, BV, warps = _blocks(T, dk, dv, q.dtype)
        n_vblk = triton.cdiv(dv, BV)
        f32 = dict(device=q.device, dtype=torch.float32)
        do = torch.zeros_like(v) if do is None else do.contiguous().to(v.dtype)
        dq_p = torch.empty(n_vblk, B, H, T, dk, **f32)
        dk_p = torch.empty(n_vblk, B, H, T, dk, **f32)
        dvx = torch.empty_like(v)
        ds0 = torch.empty(B, H, dk, dv, **f32)
        has_ds = ds_out is not None
        grid = (B * H, n_vblk)
        _ret_bwd_dq[grid](q, k, v, gamma, s0[0] if ctx.has_s0 else q, do, dq_p, B * H, H, T, dk, dv,
                          HAS_S0=ctx.has_s0, PREC=ctx.prec, UPCAST=ctx.upcast, BT=BT, BK=BK, BV=BV, num_warps=warps)
        _ret_bwd_dkv[grid](q, k, v, gamma, do, ds_out.contiguous() if has_ds else q, dk_p, dvx, ds0, B * H, H,
                           T, dk, dv, triton.cdiv(T, BT), HAS_DSOUT=has_ds, PREC=ctx.prec, UPCAST=ctx.upcast, BT=BT,
                           BK=BK, BV=BV, num_warps=warps)
        ds0 = ds0.to(ctx.state_dtype) if ctx.has_s0 else None
        return dq_p.sum(0).to(q.dtype), dk_p.sum(0).to(k.dtype), dvx, None, ds0


def retention(q, k, v, gamma, state=None):
    """Fused chunkwise retention; arguments and results as `retention_recurrent`."""
    return RetentionFunction.apply(q, k, v, gamma, state)


def make_inputs(shape, dtype, device, seed):
    B, H, T, dk, dv = shape
    g = generator(device, seed)
    gamma = 1 - 2.0 ** (-5.0 - torch.arange(H, dtype=torch.float32, device=device))  # RetNet's γ_h
    return {"q": randn((B, H, T, dk), dtype, device, g), "k": randn((B, H, T, dk), dtype, device, g, dk ** -0.5),
            "v": randn((B, H, T, dv), dtype, device, g), "gamma": gamma,
            "state": randn((B, H, dk, dv), dtype, device, g, 0.5)}


KERNEL = register(Kernel(
    name="retention", title="RetNet chunkwise retention (recurrent reference, chunkwise PyTorch baseline)",
    reference=retention_recurrent, baseline=retention_chunkwise, fused=retention, make_inputs=make_inputs,
    dims="batch x heads x T x dk x dv",
    shapes={"cpu": [(1, 2, 32, 16, 32), (1, 3, 19, 12, 20)], "gpu": [(8, 12, 1024, 64, 128)]},
))
