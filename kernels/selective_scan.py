"""Selective scan of Mamba (Gu & Dao 2023, eq. 2a/2b, zero-order-hold Ā = exp(ΔA), B̄ ≈ ΔB): the PyTorch
forms and the fused Triton kernel.

For every batch b and channel d, with a diagonal state h of size n:
    h_t = exp(Δ_t A) ⊙ h_{t-1} + Δ_t u_t B_t          (B_t, C_t shared by all channels)
    y_t = C_t · h_t + D u_t

PyTorch forms (the Mamba model trains with the chunked one and generates with the step):
    selective_scan_ref(u, delta, A, B, C, D, h0=None) -> (y, h_last)
        u, delta: (b, l, d) float; A: (d, n) (negative); B, C: (b, l, n); D: (d,); h0: (b, d, n) or None.
        y: (b, l, d); h_last: (b, d, n). One Python step per token: the readable definition, and the
        reference the other forms and the kernel are tested against.
    selective_scan_chunked(u, delta, A, B, C, D, h0=None, chunk=None) -> (y, h_last)
        Same signature and result; the two-level scan used in training (about 2*sqrt(l) sequential steps).
    selective_scan_step(u_t, delta_t, A, B_t, C_t, D, h) -> (y_t, h)
        One token: u_t, delta_t (b, d); B_t, C_t (b, n); h (b, d, n). Used by generation.
The fused `selective_scan(u, delta, A, B, C, D, h0)` takes the arguments and gives the results of
`selective_scan_ref`.

Forward: one program per (batch, block of channels) walks the sequence with its state block in registers
and writes y; every CHUNK steps it checkpoints the state (b, l/CHUNK, d, n). No (b, l, d, n) tensor is
ever stored, where the PyTorch scans keep several for autograd.
Backward: the reverse-time recurrence of the adjoint state dh, chunk by chunk from the end. Each chunk's
states are recomputed from its checkpoint into a (CHUNK, d, n) scratch, then, for t from last to first:
    dh   += dy_t C_t                           dC_t = sum_d dy_t h_t          dD += dy_t u_t
    dΔ_t  = sum_n dh (A exp(Δ_t A) h_{t-1} + u_t B_t)
    du_t  = dy_t D + Δ_t sum_n dh B_t          dB_t = sum_d dh Δ_t u_t
    dA   += dh Δ_t exp(Δ_t A) h_{t-1}          dh <- dh exp(Δ_t A)   (on to h_{t-1})
Sums over channels (dB, dC) and over batch (dA, dD) go through per-program fp32 partials.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from kernels import interpreting
from kernels._harness import Kernel, generator, next_pow2, randn, register
from kernels._triton import tl, triton


# ---------------------------------------------------------------------------------------------- PyTorch
def selective_scan_step(u_t, delta_t, A, B_t, C_t, D, h):
    """One recurrence step: h = exp(Δ A) h + Δ B u;  y = C·h + D u."""
    dA = torch.exp(delta_t.unsqueeze(-1) * A)                       # (b, d, n)  Ā = exp(ΔA)
    dBu = (delta_t * u_t).unsqueeze(-1) * B_t.unsqueeze(1)          # (b, d, n)  B̄u = ΔBu
    h = dA * h + dBu
    y = torch.einsum("bdn,bn->bd", h, C_t) + D * u_t
    return y, h


def selective_scan_ref(u, delta, A, B, C, D, h0=None):
    """Sequential selective scan, one token at a time: the definition the other forms are tested against."""
    b, l, d = u.shape
    h = u.new_zeros(b, d, A.shape[1]) if h0 is None else h0
    ys = []
    for t in range(l):
        y, h = selective_scan_step(u[:, t], delta[:, t], A, B[:, t], C[:, t], D, h)
        ys.append(y)
    return torch.stack(ys, dim=1), h


def selective_scan_chunked(u, delta, A, B, C, D, h0=None, chunk=None):
    """Two-level scan: split the sequence into chunks of T tokens.

    1. inside every chunk at once, scan from a zero state (T sequential steps over all chunks together);
    2. carry the state across chunks (l/T sequential steps): h_start[c+1] = Π_chunk Ā · h_start[c] + h_local_end[c];
    3. add the carried state everywhere: h_t = h_local_t + exp(Σ_{s<=t in chunk} Δ_s A) · h_start.
    Only products of decays <= 1 appear (no division by a decay), so it is as stable as the sequential scan.
    """
    b, l, d = u.shape
    n = A.shape[1]
    T = chunk or max(1, math.ceil(math.sqrt(l)))
    nc = math.ceil(l / T)
    pad = nc * T - l
    if pad:  # padded steps keep the state unchanged: Δ = 0 gives Ā = 1 and B̄u = 0
        u, delta, B = (F.pad(t, (0, 0, 0, pad)) for t in (u, delta, B))
    delta_c = delta.view(b, nc, T, d)
    dA = torch.exp(delta_c.unsqueeze(-1) * A)                       # (b, nc, T, d, n)  Ā = exp(ΔA)
    dBu = (delta * u).unsqueeze(-1) * B.unsqueeze(2)                # (b, l, d, n)      B̄u = ΔBu
    dA_t, dBu_t = dA.unbind(2), dBu.view(b, nc, T, d, n).unbind(2)  # T slices of (b, nc, d, n)
    # 1. local scans, all chunks in parallel
    h = dBu_t[0]
    local = [h]
    for t in range(1, T):
        h = dA_t[t] * h + dBu_t[t]
        local.append(h)
    h_local = torch.stack(local, dim=2)                               # (b, nc, T, d, n)
    # decay from the chunk start: Π_{s<=t} exp(Δ_s A) = exp((Σ_{s<=t} Δ_s) A), a cumsum over (b, nc, T, d) only
    decay = torch.exp(torch.cumsum(delta_c, dim=2).unsqueeze(-1) * A)  # (b, nc, T, d, n)
    # 2. carry the state from chunk to chunk
    carry = u.new_zeros(b, d, n) if h0 is None else h0
    starts = []
    for decay_c, h_end_c in zip(decay[:, :, -1].unbind(1), local[-1].unbind(1)):
        starts.append(carry)
        carry = decay_c * carry + h_end_c
    h_start = torch.stack(starts, dim=1)                            # (b, nc, d, n)
    # 3. every state = local part + decayed carried state
    hs = h_local + decay * h_start.unsqueeze(2)                     # (b, nc, T, d, n)
    hs = hs.view(b, nc * T, d, n)[:, :l]
    y = torch.einsum("bldn,bln->bld", hs, C) + D * u[:, :l]
    return y, carry


# ----------------------------------------------------------------------------------------------- Triton
@triton.jit
def _scan_fwd(U, DELTA, A, Bm, Cm, Dv, H0, Y, HLAST, HS, L, D, N, n_chunks, HAS_H0: tl.constexpr,
              CHUNK: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr):
    pid_b, pid_d = tl.program_id(0).to(tl.int64), tl.program_id(1)
    ds = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    ns = tl.arange(0, BLOCK_N)
    dmask, nmask = ds < D, ns < N
    mask2 = dmask[:, None] & nmask[None, :]
    dn = ds[:, None] * N + ns[None, :]
    a = tl.load(A + dn, mask=mask2, other=0.0).to(tl.float32)
    dskip = tl.load(Dv + ds, mask=dmask, other=0.0).to(tl.float32)
    if HAS_H0:
        h = tl.load(H0 + pid_b * D * N + dn, mask=mask2, other=0.0).to(tl.float32)
    else:
        h = tl.zeros([BLOCK_D, BLOCK_N], dtype=tl.float32)
    for c in range(0, n_chunks):
        tl.store(HS + (pid_b * n_chunks + c) * D * N + dn, h, mask=mask2)  # state before the chunk
        for i in range(0, CHUNK):
            t = c * CHUNK + i
            # padding steps (t >= L) load Δ = 0: exp(0) = 1, ΔuB = 0, so the state is unchanged.
            # (Masks are built elementwise from same-shape tensors: the interpreter mishandles
            # broadcasting a scalar condition into a mask.)
            dlive, nlive = dmask & (ds * 0 + t < L), nmask & (ns * 0 + t < L)
            row = (pid_b * L + t) * D
            u = tl.load(U + row + ds, mask=dlive, other=0.0).to(tl.float32)
            dt = tl.load(DELTA + row + ds, mask=dlive, other=0.0).to(tl.float32)
            b = tl.load(Bm + (pid_b * L + t) * N + ns, mask=nlive, other=0.0).to(tl.float32)
            cc = tl.load(Cm + (pid_b * L + t) * N + ns, mask=nlive, other=0.0).to(tl.float32)
            h = tl.exp(dt[:, None] * a) * h + (dt * u)[:, None] * b[None, :]
            y = tl.sum(h * cc[None, :], axis=1) + dskip * u
            tl.store(Y + row + ds, y.to(Y.dtype.element_ty), mask=dlive)
    tl.store(HLAST + pid_b * D * N + dn, h, mask=mask2)


@triton.jit
def _scan_bwd(U, DELTA, A, Bm, Cm, Dv, HS, DY, DHLAST, SCR, DU, DDELTA, DA_P, DB_P, DC_P, DD_P, DH0,
              L, D, N, n_chunks, n_dblk, HAS_DHLAST: tl.constexpr, CHUNK: tl.constexpr,
              BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr):
    pid_b, pid_d = tl.program_id(0).to(tl.int64), tl.program_id(1)
    ds = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    ns = tl.arange(0, BLOCK_N)
    dmask, nmask = ds < D, ns < N
    mask2 = dmask[:, None] & nmask[None, :]
    dn = ds[:, None] * N + ns[None, :]
    blk = tl.arange(0, BLOCK_D)[:, None] * BLOCK_N + ns[None, :]  # scratch tile layout
    scr = SCR + (pid_b * n_dblk + pid_d) * CHUNK * BLOCK_D * BLOCK_N
    a = tl.load(A + dn, mask=mask2, other=0.0).to(tl.float32)
    dskip = tl.load(Dv + ds, mask=dmask, other=0.0).to(tl.float32)
    if HAS_DHLAST:
        dh = tl.load(DHLAST + pid_b * D * N + dn, mask=mask2, other=0.0).to(tl.float32)
    else:
        dh = tl.zeros([BLOCK_D, BLOCK_N], dtype=tl.float32)
    da_acc = tl.zeros([BLOCK_D, BLOCK_N], dtype=tl.float32)
    dd_acc = tl.zeros([BLOCK_D], dtype=tl.float32)
    for ci in range(0, n_chunks):
        c = n_chunks - 1 - ci
        h_start = tl.load(HS + (pid_b * n_chunks + c) * D * N + dn, mask=mask2, other=0.0)
        tl.debug_barrier()  # the previous chunk's reads of the scratch are done before it is rewritten
        # recompute this chunk's states h_t (after step t) into the scratch
        h = h_start
        for i in range(0, CHUNK):
            t = c * CHUNK + i
            dlive, nlive = dmask & (ds * 0 + t < L), nmask & (ns * 0 + t < L)
            row = (pid_b * L + t) * D
            u = tl.load(U + row + ds, mask=dlive, other=0.0).to(tl.float32)
            dt = tl.load(DELTA + row + ds, mask=dlive, other=0.0).to(tl.float32)
            b = tl.load(Bm + (pid_b * L + t) * N + ns, mask=nlive, other=0.0).to(tl.float32)
            h = tl.exp(dt[:, None] * a) * h + (dt * u)[:, None] * b[None, :]
            tl.store(scr + i * BLOCK_D * BLOCK_N + blk, h)
        tl.debug_barrier()  # the scratch written above is read back by other threads of the program
        # reverse-time adjoint recurrence over the chunk
        for j in range(0, CHUNK):
            i = CHUNK - 1 - j
            t = c * CHUNK + i
            dlive, nlive = dmask & (ds * 0 + t < L), nmask & (ns * 0 + t < L)
            row = (pid_b * L + t) * D
            u = tl.load(U + row + ds, mask=dlive, other=0.0).to(tl.float32)
            dt = tl.load(DELTA + row + ds, mask=dlive, other=0.0).to(tl.float32)
            dy = tl.load(DY + row + ds, mask=dlive, other=0.0).to(tl.float32)
            b = tl.load(Bm + (pid_b * L + t) * N + ns, mask=nlive, other=0.0).to(tl.float32)
            cc = tl.load(Cm + (pid_b * L + t) * N + ns, mask=nlive, other=0.0).to(tl.float32)
            h_t = tl.load(scr + i * BLOCK_D * BLOCK_N + blk)
            first = blk * 0 + i == 0
            h_prev = tl.load(scr + (i - 1) * BLOCK_D * BLOCK_N + blk, mask=blk * 0 + i > 0, other=0.0)
            h_prev = tl.where(first, h_start, h_prev)  # the state before the chunk is its checkpoint
            dh += dy[:, None] * cc[None, :]
            decay = tl.exp(dt[:, None] * a)
            dc = tl.sum(tl.where(mask2, dy[:, None] * h_t, 0.0), axis=0)
            db = tl.sum(tl.where(mask2, dh * (dt * u)[:, None], 0.0), axis=0)
            ddt = tl.sum(dh * (a * decay * h_prev + u[:, None] * b[None, :]), axis=1)
            du = dy * dskip + dt * tl.sum(dh * b[None, :], axis=1)
            da_acc += dh * dt[:, None] * decay * h_prev
            dd_acc += dy * u
            part = ((pid_b * n_dblk + pid_d) * L + t) * N + ns
            tl.store(DB_P + part, db, mask=nlive)
            tl.store(DC_P + part, dc, mask=nlive)
            tl.store(DU + row + ds, du.to(DU.dtype.element_ty), mask=dlive)
            tl.store(DDELTA + row + ds, ddt.to(DDELTA.dtype.element_ty), mask=dlive)
            dh = dh * decay
    tl.store(DH0 + pid_b * D * N + dn, dh, mask=mask2)
    tl.store(DA_P + pid_b * D * N + dn, da_acc, mask=mask2)
    tl.store(DD_P + pid_b * D + ds, dd_acc, mask=dmask)


def _blocks(d: int, n: int, L: int) -> tuple[int, int, int]:
    BLOCK_N = next_pow2(n)
    if interpreting():
        return min(next_pow2(d), 256), BLOCK_N, 8
    return min(next_pow2(d), max(16, 2048 // BLOCK_N)), BLOCK_N, 64


class SelectiveScanFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, h0):
        b, L, d = u.shape
        n = A.shape[1]
        u, delta, A, B, C, D = (t.contiguous() for t in (u, delta, A, B, C, D))
        BLOCK_D, BLOCK_N, CHUNK = _blocks(d, n, L)
        n_chunks = triton.cdiv(L, CHUNK)
        y = torch.empty_like(u)
        h_last = torch.empty(b, d, n, device=u.device, dtype=torch.float32)
        hs = torch.empty(b, n_chunks, d, n, device=u.device, dtype=torch.float32)
        has_h0 = h0 is not None
        grid = (b, triton.cdiv(d, BLOCK_D))
        _scan_fwd[grid](u, delta, A, B, C, D, h0.contiguous() if has_h0 else h_last, y, h_last, hs,
                        L, d, n, n_chunks, HAS_H0=has_h0, CHUNK=CHUNK, BLOCK_D=BLOCK_D, BLOCK_N=BLOCK_N)
        ctx.save_for_backward(u, delta, A, B, C, D, hs)
        ctx.h0_dtype = h0.dtype if has_h0 else None
        return y, h_last

    @staticmethod
    def backward(ctx, dy, dh_last):
        u, delta, A, B, C, D, hs = ctx.saved_tensors
        b, L, d = u.shape
        n = A.shape[1]
        BLOCK_D, BLOCK_N, CHUNK = _blocks(d, n, L)
        n_chunks, n_dblk = hs.shape[1], triton.cdiv(d, BLOCK_D)
        f32 = dict(device=u.device, dtype=torch.float32)
        dy = torch.zeros_like(u) if dy is None else dy.contiguous()
        scr = torch.empty(b, n_dblk, CHUNK, BLOCK_D, BLOCK_N, **f32)
        du, ddelta = torch.empty_like(u), torch.empty_like(delta)
        da_p, dd_p, dh0 = torch.empty(b, d, n, **f32), torch.empty(b, d, **f32), torch.empty(b, d, n, **f32)
        db_p, dc_p = torch.empty(b, n_dblk, L, n, **f32), torch.empty(b, n_dblk, L, n, **f32)
        has_dh = dh_last is not None
        _scan_bwd[(b, n_dblk)](u, delta, A, B, C, D, hs, dy, dh_last.contiguous() if has_dh else hs, scr,
                               du, ddelta, da_p, db_p, dc_p, dd_p, dh0, L, d, n, n_chunks, n_dblk,
                               HAS_DHLAST=has_dh, CHUNK=CHUNK, BLOCK_D=BLOCK_D, BLOCK_N=BLOCK_N)
        dh0 = dh0.to(ctx.h0_dtype) if ctx.h0_dtype is not None else None
        return (du, ddelta, da_p.sum(0).to(A.dtype), db_p.sum(1).to(B.dtype), dc_p.sum(1).to(C.dtype),
                dd_p.sum(0).to(D.dtype), dh0)


def selective_scan(u, delta, A, B, C, D, h0=None):
    """Fused selective scan; arguments and results as `selective_scan_ref`."""
    return SelectiveScanFunction.apply(u, delta, A, B, C, D, h0)


def make_inputs(shape, dtype, device, seed):
    b, L, d, n = shape
    g = generator(device, seed)
    delta = F.softplus(randn((b, L, d), torch.float32, device, g, 0.5, False) - 2.0)  # ~0.1, like dt_init
    A = -torch.arange(1, n + 1, device=device, dtype=torch.float32).repeat(d, 1)     # S4D-real
    A = A * (1.0 + 0.1 * randn((d, n), torch.float32, device, g, requires_grad=False))
    return {"u": randn((b, L, d), dtype, device, g), "delta": delta.to(dtype).requires_grad_(),
            "A": A.to(dtype).requires_grad_(), "B": randn((b, L, n), dtype, device, g),
            "C": randn((b, L, n), dtype, device, g),
            "D": randn((d,), dtype, device, g, 0.1).detach().add_(1.0).requires_grad_(),
            "h0": randn((b, d, n), dtype, device, g, 0.5)}


KERNEL = register(Kernel(
    name="selective_scan", title="Mamba selective scan (sequential reference, chunked PyTorch baseline)",
    reference=selective_scan_ref, baseline=selective_scan_chunked, fused=selective_scan, make_inputs=make_inputs,
    dims="batch x L x d_inner x d_state",
    shapes={"cpu": [(2, 16, 16, 8), (1, 11, 13, 5)], "gpu": [(8, 1024, 1536, 16)]},
))
