"""WKV of RWKV-6 "Finch" (Peng et al. 2024): the matrix-valued linear recurrence with data-dependent
per-channel decay; the PyTorch forms and the fused Triton kernel (the fused-recurrent form of
flash-linear-attention's rwkv6).

Per batch b and head h, with state S (K x V), r_t, k_t, w_t = exp(log_w_t) in R^K, v_t in R^V, bonus u:
    y_t = r_t (S_{t-1} + diag(u) k_t^T v_t)
    S_t = diag(w_t) S_{t-1} + k_t^T v_t

PyTorch forms, all fp32 (the RWKV model trains with the chunked one and generates with the step):
    wkv_ref(r, k, v, log_w, u, state=None) -> (y, state)
        r, k, log_w: (B, T, H, K); v: (B, T, H, V); log_w = log of the per-step decay (<= 0); u: (H, K) bonus;
        state: (B, H, K, V) or None (zeros). y: (B, T, H, V). One Python step per token: the definition.
    wkv_chunked(r, k, v, log_w, u, state=None, chunk=16) -> (y, state)
        Same signature and result; the chunked parallel form used in training. Inside a chunk the decay between
        positions s < t is exp(Σ_{s<i<t} log w_i), summed over exactly those steps (a masked cumsum), so no
        decay is ever divided by and no large cumulative sums are subtracted: fp32-exact however strong the decay.
    wkv_step(r_t, k_t, v_t, log_w_t, u, state) -> (y_t, state)      one token (B, H, K) / (B, H, V).
The fused `wkv(r, k, v, log_w, u, state)` takes the arguments and gives the results of `wkv_ref`.

Forward: one program per (batch x head, block of V columns) walks the sequence with its (K, BLOCK_V)
state in registers, checkpointing the state every CHUNK steps (B, H, T/CHUNK, K, V); the PyTorch chunked
form instead keeps (L, L, K) decay tensors per chunk for autograd.
Backward: the adjoint G = dL/dS_t runs backwards in time, chunk by chunk; each chunk's states are first
recomputed from its checkpoint into a (CHUNK, K, BLOCK_V) scratch. For t from last to first, with
S = S_{t-1} and g_t = sum_v dy_t v_t:
    dr_t = (S + diag(u) k_t^T v_t) dy_t           du  += r_t k_t g_t
    dk_t = r_t u g_t + G v_t                       dv_t = (sum_k r_t u k_t) dy_t + G^T k_t
    dlog_w_t = w_t sum_v G ⊙ S                     G   <- diag(w_t) G + r_t^T dy_t
Sums over V (dr, dk, dlog_w, du) go through per-V-block partials (one block when V <= 64).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from kernels import interpreting
from kernels._harness import Kernel, generator, next_pow2, randn, register
from kernels._triton import tl, triton


# ---------------------------------------------------------------------------------------------- PyTorch
def wkv_step(r_t, k_t, v_t, log_w_t, u, state):
    """y = r·(S + diag(u) kᵀv);  S = diag(w) S + kᵀv.   r, k, log_w (B, H, K); v (B, H, V); S (B, H, K, V)."""
    kv = k_t.unsqueeze(-1) * v_t.unsqueeze(-2)                               # (B, H, K, V)  kᵀv
    y = torch.einsum("bhk,bhkv->bhv", r_t, state + u.unsqueeze(-1) * kv)
    state = torch.exp(log_w_t).unsqueeze(-1) * state + kv
    return y, state


def wkv_ref(r, k, v, log_w, u, state=None):
    """The recurrence, one token at a time."""
    B, T, H, K = r.shape
    if state is None:
        state = r.new_zeros(B, H, K, v.shape[-1])
    ys = []
    for t in range(T):
        y, state = wkv_step(r[:, t], k[:, t], v[:, t], log_w[:, t], u, state)
        ys.append(y)
    return torch.stack(ys, dim=1), state


def wkv_chunked(r, k, v, log_w, u, state=None, chunk=16):
    """Chunked parallel form. For a chunk that starts from state S, with decays between positions written as
    sums of log w over exactly the steps in between (never as a difference of two cumulative sums, which
    would lose precision when one step's decay is very strong):
        y_t   = (r_t ⊙ exp(Σ_{i<t} log w_i)) S + Σ_{s<t} [Σ_k r_t k_s exp(Σ_{s<i<t} log w_i)] v_s + (r_t ⊙ u ⊙ k_t) v_t
        S_end = exp(Σ_i log w_i) ⊙ S + Σ_s (k_s ⊙ exp(Σ_{s<i} log w_i))ᵀ v_s
    """
    B, T, H, K = r.shape
    if state is None:
        state = r.new_zeros(B, H, K, v.shape[-1])
    # (B, H, T, K): heads as batch
    r, k, v, log_w = (t.transpose(1, 2) for t in (r, k, v, log_w))
    ys = []
    for i in range(0, T, chunk):
        rc, kc, vc, wc = r[:, :, i:i + chunk], k[:, :, i:i + chunk], v[:, :, i:i + chunk], log_w[:, :, i:i + chunk]
        L = rc.shape[2]
        lower = torch.ones(L, L, dtype=torch.bool, device=r.device).tril(-1)[:, :, None]  # [t, s]: s < t
        # seg[t, s] = Σ_{s<i<=t} log w_i (a masked cumsum: each entry sums only its own steps)
        seg = torch.where(lower, wc.unsqueeze(3), 0.0).cumsum(dim=2)           # (B, H, L_t, L_s, K)
        between = F.pad(seg, (0, 0, 0, 0, 1, -1))                             # [t, s] = Σ_{s<i<t} log w_i
        decay = torch.exp(between.masked_fill(~lower, -math.inf))            # 0 where s >= t
        att = (rc.unsqueeze(3) * kc.unsqueeze(2) * decay).sum(-1)            # (B, H, L, L)
        bonus = (rc * u[None, :, None, :] * kc).sum(-1, keepdim=True)         # (B, H, L, 1) current token
        before = F.pad(torch.cumsum(wc, dim=2), (0, 0, 1, -1))                # Σ_{i<t} log w_i
        y = att @ vc + bonus * vc + (rc * torch.exp(before)) @ state
        to_end = seg[:, :, -1]                                                # Σ_{s<i<=end} log w_i, (B, H, L, K)
        total = before[:, :, -1:] + wc[:, :, -1:]                             # Σ_i log w_i, (B, H, 1, K)
        state = torch.exp(total).transpose(2, 3) * state + (kc * torch.exp(to_end)).transpose(2, 3) @ vc
        ys.append(y)
    return torch.cat(ys, dim=2).transpose(1, 2), state


# ----------------------------------------------------------------------------------------------- Triton
@triton.jit
def _wkv_fwd(R, Kx, V, LW, U, S0, Y, SOUT, CKPT, T, H, K, VD, n_chunks, HAS_S0: tl.constexpr,
             CHUNK: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_V: tl.constexpr):
    pid_bh, pid_v = tl.program_id(0).to(tl.int64), tl.program_id(1)
    b, h = pid_bh // H, pid_bh % H
    ks = tl.arange(0, BLOCK_K)
    vs = pid_v * BLOCK_V + tl.arange(0, BLOCK_V)
    kmask, vmask = ks < K, vs < VD
    mask2 = kmask[:, None] & vmask[None, :]
    kv_off = ks[:, None] * VD + vs[None, :]
    u = tl.load(U + h * K + ks, mask=kmask, other=0.0).to(tl.float32)
    if HAS_S0:
        S = tl.load(S0 + pid_bh * K * VD + kv_off, mask=mask2, other=0.0).to(tl.float32)
    else:
        S = tl.zeros([BLOCK_K, BLOCK_V], dtype=tl.float32)
    for c in range(0, n_chunks):
        tl.store(CKPT + (pid_bh * n_chunks + c) * K * VD + kv_off, S, mask=mask2)
        for i in range(0, CHUNK):
            t = c * CHUNK + i
            # padding steps (t >= T) load k = v = 0 and log w = 0: the state is unchanged
            klive, vlive = kmask & (ks * 0 + t < T), vmask & (vs * 0 + t < T)
            kvec = ((b * T + t) * H + h) * K + ks
            r = tl.load(R + kvec, mask=klive, other=0.0).to(tl.float32)
            k = tl.load(Kx + kvec, mask=klive, other=0.0).to(tl.float32)
            lw = tl.load(LW + kvec, mask=klive, other=0.0).to(tl.float32)
            v = tl.load(V + ((b * T + t) * H + h) * VD + vs, mask=vlive, other=0.0).to(tl.float32)
            kv = k[:, None] * v[None, :]
            y = tl.sum(r[:, None] * (S + u[:, None] * kv), axis=0)
            tl.store(Y + ((b * T + t) * H + h) * VD + vs, y.to(Y.dtype.element_ty), mask=vlive)
            S = tl.exp(lw)[:, None] * S + kv
    tl.store(SOUT + pid_bh * K * VD + kv_off, S, mask=mask2)


@triton.jit
def _wkv_bwd(R, Kx, V, LW, U, CKPT, DY, DSOUT, SCR, DR_P, DK_P, DLW_P, DV, DU_P, DS0, B, T, H, K, VD,
             n_chunks, n_vblk, HAS_DSOUT: tl.constexpr, CHUNK: tl.constexpr, BLOCK_K: tl.constexpr,
             BLOCK_V: tl.constexpr):
    pid_bh, pid_v = tl.program_id(0).to(tl.int64), tl.program_id(1)
    b, h = pid_bh // H, pid_bh % H
    ks = tl.arange(0, BLOCK_K)
    vs = pid_v * BLOCK_V + tl.arange(0, BLOCK_V)
    kmask, vmask = ks < K, vs < VD
    mask2 = kmask[:, None] & vmask[None, :]
    kv_off = ks[:, None] * VD + vs[None, :]
    blk = ks[:, None] * BLOCK_V + tl.arange(0, BLOCK_V)[None, :]
    scr = SCR + (pid_bh * n_vblk + pid_v) * CHUNK * BLOCK_K * BLOCK_V
    u = tl.load(U + h * K + ks, mask=kmask, other=0.0).to(tl.float32)
    if HAS_DSOUT:
        G = tl.load(DSOUT + pid_bh * K * VD + kv_off, mask=mask2, other=0.0).to(tl.float32)
    else:
        G = tl.zeros([BLOCK_K, BLOCK_V], dtype=tl.float32)
    du = tl.zeros([BLOCK_K], dtype=tl.float32)
    for ci in range(0, n_chunks):
        c = n_chunks - 1 - ci
        S = tl.load(CKPT + (pid_bh * n_chunks + c) * K * VD + kv_off, mask=mask2, other=0.0)
        tl.debug_barrier()  # the previous chunk's reads of the scratch are done before it is rewritten
        for i in range(0, CHUNK):  # recompute S_{t-1} for every step of the chunk
            t = c * CHUNK + i
            klive, vlive = kmask & (ks * 0 + t < T), vmask & (vs * 0 + t < T)
            kvec = ((b * T + t) * H + h) * K + ks
            k = tl.load(Kx + kvec, mask=klive, other=0.0).to(tl.float32)
            lw = tl.load(LW + kvec, mask=klive, other=0.0).to(tl.float32)
            v = tl.load(V + ((b * T + t) * H + h) * VD + vs, mask=vlive, other=0.0).to(tl.float32)
            tl.store(scr + i * BLOCK_K * BLOCK_V + blk, S)
            S = tl.exp(lw)[:, None] * S + k[:, None] * v[None, :]
        tl.debug_barrier()  # the scratch written above is read back by other threads of the program
        for j in range(0, CHUNK):
            i = CHUNK - 1 - j
            t = c * CHUNK + i
            klive, vlive = kmask & (ks * 0 + t < T), vmask & (vs * 0 + t < T)
            kvec = ((b * T + t) * H + h) * K + ks
            vvec = ((b * T + t) * H + h) * VD + vs
            r = tl.load(R + kvec, mask=klive, other=0.0).to(tl.float32)
            k = tl.load(Kx + kvec, mask=klive, other=0.0).to(tl.float32)
            lw = tl.load(LW + kvec, mask=klive, other=0.0).to(tl.float32)
            v = tl.load(V + vvec, mask=vlive, other=0.0).to(tl.float32)
            dy = tl.load(DY + vvec, mask=vlive, other=0.0).to(tl.float32)
            S = tl.load(scr + i * BLOCK_K * BLOCK_V + blk)  # S_{t-1}
            w = tl.exp(lw)
            kv = k[:, None] * v[None, :]
            g = tl.sum(dy * v, axis=0)
            dr = tl.sum(dy[None, :] * (S + u[:, None] * kv), axis=1)
            dk = r * u * g + tl.sum(G * v[None, :], axis=1)
            dlw = w * tl.sum(G * S, axis=1)
            dv = tl.sum(r * u * k, axis=0) * dy + tl.sum(G * k[:, None], axis=0)
            du += r * k * g
            part = ((pid_v * B + b) * T + t) * H * K + h * K + ks
            tl.store(DR_P + part, dr, mask=klive)
            tl.store(DK_P + part, dk, mask=klive)
            tl.store(DLW_P + part, dlw, mask=klive)
            tl.store(DV + vvec, dv.to(DV.dtype.element_ty), mask=vlive)
            G = w[:, None] * G + r[:, None] * dy[None, :]
    tl.store(DS0 + pid_bh * K * VD + kv_off, G, mask=mask2)
    tl.store(DU_P + (pid_v * B + b) * H * K + h * K + ks, du, mask=kmask)


def _blocks(K: int, VD: int) -> tuple[int, int, int]:
    BLOCK_K = next_pow2(K)
    if interpreting():
        return BLOCK_K, next_pow2(VD), 8
    return BLOCK_K, min(next_pow2(VD), 64), 32


class WKVFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, r, k, v, log_w, u, state):
        B, T, H, K = r.shape
        VD = v.shape[-1]
        r, k, v, log_w, u = (t.contiguous() for t in (r, k, v, log_w, u))
        BLOCK_K, BLOCK_V, CHUNK = _blocks(K, VD)
        n_chunks, n_vblk = triton.cdiv(T, CHUNK), triton.cdiv(VD, BLOCK_V)
        f32 = dict(device=r.device, dtype=torch.float32)
        y = torch.empty(B, T, H, VD, device=r.device, dtype=v.dtype)
        s_out = torch.empty(B, H, K, VD, **f32)
        ckpt = torch.empty(B, H, n_chunks, K, VD, **f32)
        has_s0 = state is not None
        _wkv_fwd[(B * H, n_vblk)](r, k, v, log_w, u, state.contiguous() if has_s0 else s_out, y, s_out, ckpt,
                                  T, H, K, VD, n_chunks, HAS_S0=has_s0, CHUNK=CHUNK, BLOCK_K=BLOCK_K,
                                  BLOCK_V=BLOCK_V)
        ctx.save_for_backward(r, k, v, log_w, u, ckpt)
        ctx.state_dtype = state.dtype if has_s0 else None
        return y, s_out

    @staticmethod
    def backward(ctx, dy, ds_out):
        r, k, v, log_w, u, ckpt = ctx.saved_tensors
        B, T, H, K = r.shape
        VD = v.shape[-1]
        BLOCK_K, BLOCK_V, CHUNK = _blocks(K, VD)
        n_chunks, n_vblk = ckpt.shape[2], triton.cdiv(VD, BLOCK_V)
        f32 = dict(device=r.device, dtype=torch.float32)
        dy = torch.zeros_like(v) if dy is None else dy.contiguous()
        scr = torch.empty(B * H, n_vblk, CHUNK, BLOCK_K, BLOCK_V, **f32)
        dr_p, dk_p, dlw_p = (torch.empty(n_vblk, B, T, H, K, **f32) for _ in range(3))
        du_p = torch.empty(n_vblk, B, H, K, **f32)
        dv, ds0 = torch.empty_like(v), torch.empty(B, H, K, VD, **f32)
        has_ds = ds_out is not None
        _wkv_bwd[(B * H, n_vblk)](r, k, v, log_w, u, ckpt, dy, ds_out.contiguous() if has_ds else ckpt, scr,
                                  dr_p, dk_p, dlw_p, dv, du_p, ds0, B, T, H, K, VD, n_chunks, n_vblk,
                                  HAS_DSOUT=has_ds, CHUNK=CHUNK, BLOCK_K=BLOCK_K, BLOCK_V=BLOCK_V)
        ds0 = ds0.to(ctx.state_dtype) if ctx.state_dtype is not None else None
        return (dr_p.sum(0).to(r.dtype), dk_p.sum(0).to(k.dtype), dv, dlw_p.sum(0).to(log_w.dtype),
                du_p.sum((0, 1)).to(u.dtype), ds0)


def wkv(r, k, v, log_w, u, state=None):
    """Fused RWKV-6 WKV; arguments and results as `wkv_ref`."""
    return WKVFunction.apply(r, k, v, log_w, u, state)


def make_inputs(shape, dtype, device, seed):
    B, T, H, K = shape
    g = generator(device, seed)
    # log w = -exp(d + noise): decays in (0, 1), from ~0.999 (long memory) to ~0.05 (short)
    d = torch.linspace(-6.0, 1.0, K, device=device)
    log_w = -torch.exp(d + 0.5 * randn((B, T, H, K), torch.float32, device, g, requires_grad=False))
    return {"r": randn((B, T, H, K), dtype, device, g), "k": randn((B, T, H, K), dtype, device, g, K ** -0.5),
            "v": randn((B, T, H, K), dtype, device, g), "log_w": log_w.to(dtype).requires_grad_(),
            "u": randn((H, K), dtype, device, g, 0.5), "state": randn((B, H, K, K), dtype, device, g, 0.5)}


KERNEL = register(Kernel(
    name="wkv", title="RWKV-6 WKV recurrence (sequential reference, chunked PyTorch baseline)",
    reference=wkv_ref, baseline=wkv_chunked, fused=wkv, make_inputs=make_inputs,
    dims="batch x T x heads x head_size",
    shapes={"cpu": [(1, 16, 2, 16), (1, 11, 3, 12)], "gpu": [(8, 1024, 12, 64)]},
))
