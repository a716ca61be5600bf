"""Cross-entropy fused with the final linear layer, chunked over tokens so that the full (tokens x vocab)
logits never exist (llm.c's fused classifier, Liger-Kernel's fused_linear_cross_entropy).

For hidden states x (N, H), classifier weight W (V, H), optional bias b, targets y (N,) (ignore_index
skipped), the loss is the mean over the n valid tokens of
    loss_i = logsumexp_j(z_ij) - z_{i, y_i},     z = x W^T + b
and its gradient with respect to the logits is known in closed form:
    dL/dz_ij = (softmax(z_i)_j - [j == y_i]) / n
So the forward does everything, one chunk of C tokens at a time:
    z_c   = x_c W^T + b                 (C, V)   the only logits ever held, reused in place
    Triton: online logsumexp over V in blocks -> loss_c; then z_c <- dL/dz_c in place
    dx_c  = dz_c W,   dW^T += x_c^T dz_c,  db += sum_rows dz_c
and the backward only scales the saved dx, dW, db by the incoming scalar gradient. Peak memory is
dx + dW + one chunk of logits, instead of logits + log-probabilities + their gradient (3 N V floats).
The chunk size follows Liger: C ~ N / ceil(V / H), so a chunk of logits is about as big as x.

Two options of kernels/logits.py, which holds the PyTorch definitions:
    vocab    W may have padding rows past the `vocab` classes (a vocabulary padded to a multiple of 64, as
             nanoGPT's 50,304 for GPT-2): their logits are computed with the others, for the matmul's sake,
             and treated as -inf (probability 0, gradient 0), so the loss is the unpadded one
    l2wrap   RWKV-LM's L2Wrap: the largest logit of each counted row also gets l2wrap * max / N in dL/dz
             (N rows), found in the same pass as the logsumexp (first maximum, as torch.max)
"""
from __future__ import annotations

import contextlib
import gc

import torch
import torch.nn.functional as F

from kernels import interpreting
from kernels._harness import Kernel, generator, next_pow2, randn, register
from kernels._triton import tl, triton
from kernels.logits import cross_entropy, mask_padding


def reference(x: torch.Tensor, weight: torch.Tensor, target: torch.Tensor, bias: torch.Tensor | None = None,
              ignore_index: int = -1, vocab: int | None = None, l2wrap: float = 0.0) -> torch.Tensor:
    logits = mask_padding(F.linear(x, weight, bias).float(), vocab)  # (N, V): what the fused op never builds
    return cross_entropy(logits, target, ignore_index, l2wrap)


@triton.jit
def _ce_loss_and_grad(Z, TARGET, LOSS, SCALE, n_rows, V, WIDTH, ignore_index, l2wrap, COMPUTE_GRAD: tl.constexpr,
                      L2WRAP: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_V: tl.constexpr):
    # Z: (n_rows, WIDTH) logits, of which the first V columns are classes (the rest: vocabulary padding)
    rows = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    rmask = rows < n_rows
    tgt = tl.load(TARGET + rows, mask=rmask, other=ignore_index)
    # pass 1: online logsumexp (Milakov & Gimelshein 2018), the target logit, and (L2Wrap) the first argmax
    m = tl.full([BLOCK_M], -1e30, dtype=tl.float32)
    d = tl.zeros([BLOCK_M], dtype=tl.float32)
    z_t = tl.zeros([BLOCK_M], dtype=tl.float32)
    arg = tl.zeros([BLOCK_M], dtype=tl.int32)
    for v0 in range(0, V, BLOCK_V):
        cols = v0 + tl.arange(0, BLOCK_V)
        mask = rmask[:, None] & (cols < V)[None, :]
        z = tl.load(Z + rows[:, None] * WIDTH + cols[None, :], mask=mask, other=float("-inf")).to(tl.float32)
        z_max = tl.max(z, axis=1)
        if L2WRAP:  # a strictly larger block maximum moves the argmax: ties keep the first, as torch.max
            arg = tl.where(z_max > m, v0 + tl.argmax(z, axis=1, tie_break_left=True), arg)
        m_new = tl.maximum(m, z_max)
        d = d * tl.exp(m - m_new) + tl.sum(tl.exp(z - m_new[:, None]), axis=1)
        m = m_new
        z_t += tl.sum(tl.where(cols[None, :] == tgt[:, None], z, 0.0), axis=1)
    lse = m + tl.log(tl.where(d > 0.0, d, 1.0))  # d = 0 only on padding rows
    valid = rmask & (tgt != ignore_index)
    tl.store(LOSS + rows, tl.where(valid, lse - z_t, 0.0), mask=rmask)
    # pass 2: dL/dz = (softmax - onehot) * scale (+ L2Wrap's l2wrap * max at the argmax), over the logits;
    # padding columns get exactly 0 (their p is exp(-inf) = 0)
    if COMPUTE_GRAD:
        scale = tl.load(SCALE)
        for v0 in range(0, WIDTH, BLOCK_V):
            cols = v0 + tl.arange(0, BLOCK_V)
            mask = rmask[:, None] & (cols < WIDTH)[None, :]
            offs = rows[:, None] * WIDTH + cols[None, :]
            z = tl.load(Z + offs, mask=rmask[:, None] & (cols < V)[None, :], other=float("-inf")).to(tl.float32)
            p = tl.exp(z - lse[:, None])  # 0 wherever masked
            g = (p - tl.where(cols[None, :] == tgt[:, None], 1.0, 0.0)) * scale
            if L2WRAP:
                g += tl.where(cols[None, :] == arg[:, None], l2wrap * m[:, None], 0.0)
            g = tl.where(valid[:, None], g, 0.0)
            tl.store(Z + offs, g.to(Z.dtype.element_ty), mask=mask)


def chunk_rows(N: int, V: int, H: int) -> int:
    """Tokens per chunk: Liger's N / ceil(V / H) rounded to a power of two, at least 2^20 logits per chunk
    under the interpreter (whose cost is per launch and per block, not per element)."""
    rows = next_pow2(triton.cdiv(N, triton.cdiv(V, H)))
    if interpreting():
        rows = max(rows, next_pow2(triton.cdiv(1 << 20, V)))
    return max(1, min(rows, N))


def _ce_tiles(C: int, V: int) -> tuple[int, int, int]:
    if interpreting():
        return min(next_pow2(C), 64), min(next_pow2(V), 2048), 4
    return 1, min(next_pow2(V), 8192), 8


class FusedLinearCrossEntropyFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, target, bias, ignore_index, compute_grad, vocab, l2wrap):
        N, H = x.shape
        width = weight.shape[0]
        V = width if vocab is None else vocab
        dev = x.device
        # Under autocast the classifier matmul runs in the autocast dtype, like nn.Linear would.
        amp = dev.type in ("cuda", "cpu") and torch.is_autocast_enabled(dev.type)  # (meta: no autocast)
        dt = torch.get_autocast_dtype(dev.type) if amp else x.dtype
        with torch.autocast(dev.type, enabled=False) if amp else contextlib.nullcontext():
            xc, w = x.to(dt), weight.to(dt)
            b = bias.to(dt) if bias is not None else None
            target = target.contiguous()
            valid = target != ignore_index
            n_valid = valid.sum()
            scale = (1.0 / n_valid.clamp(min=1).float()).reshape(1)
            loss_rows = torch.empty(N, device=dev, dtype=torch.float32)
            grad_x = torch.empty_like(xc) if compute_grad else None
            # dW accumulates transposed, (H, V) += x_c^T dz_c, so that no transposed copy of a chunk of
            # logits is ever made (CPU BLAS would copy dz_c^T); one (V, H) transpose at the end
            grad_wt = torch.zeros(H, width, device=dev, dtype=torch.float32) if compute_grad else None
            grad_b = torch.zeros(width, device=dev, dtype=torch.float32) if compute_grad and b is not None else None
            C = chunk_rows(N, width, H)
            for s in range(0, N, C):
                e = min(s + C, N)
                xs = xc[s:e]
                z = F.linear(xs, w, b).contiguous()  # (c, width)
                BLOCK_M, BLOCK_V, warps = _ce_tiles(e - s, width)
                _ce_loss_and_grad[(triton.cdiv(e - s, BLOCK_M),)](
                    z, target[s:e], loss_rows[s:e], scale, e - s, V, width, ignore_index, l2wrap / N,
                    COMPUTE_GRAD=compute_grad, L2WRAP=bool(l2wrap) and compute_grad, BLOCK_M=BLOCK_M,
                    BLOCK_V=BLOCK_V, num_warps=warps)
                if compute_grad:  # z now holds dL/dz for this chunk
                    torch.mm(z, w, out=grad_x[s:e])
                    if z.dtype == torch.float32:
                        grad_wt.addmm_(xs.t(), z)
                    else:
                        grad_wt += xs.t() @ z
                    if grad_b is not None:
                        grad_b += z.sum(0, dtype=torch.float32)
                del z
                if interpreting() and e < N:
                    # The CPU interpreter leaves a reference cycle holding a launch's arguments until the
                    # next garbage collection; collect it so a chunk is freed when a GPU run would free it.
                    gc.collect()
            loss = loss_rows.sum() / n_valid  # 0/0 = nan when every target is ignored, as F.cross_entropy
        if compute_grad:
            ctx.grads = (grad_x.to(x.dtype), grad_wt.t().to(weight.dtype, memory_format=torch.contiguous_format),
                         grad_b.to(bias.dtype) if grad_b is not None else None)
        return loss

    @staticmethod
    def backward(ctx, grad_out):
        grad_x, grad_w, grad_b = ctx.grads
        ctx.grads = None
        grad_x, grad_w = grad_x.mul_(grad_out.to(grad_x.dtype)), grad_w.mul_(grad_out.to(grad_w.dtype))
        if grad_b is not None:
            grad_b = grad_b.mul_(grad_out.to(grad_b.dtype))
        return grad_x, grad_w, None, grad_b, None, None, None, None


def fused_linear_cross_entropy(x: torch.Tensor, weight: torch.Tensor, target: torch.Tensor,
                               bias: torch.Tensor | None = None, ignore_index: int = -1, vocab: int | None = None,
                               l2wrap: float = 0.0) -> torch.Tensor:
    """Mean cross-entropy of F.linear(x, weight, bias) against target, without materialising the logits.
    x (..., H) is flattened to (N, H); target (...) to (N,). vocab: the classes are the first `vocab` rows of
    weight (None: all); l2wrap: RWKV-LM's L2Wrap factor (0: off). See the module docstring."""
    x2 = x.reshape(-1, x.shape[-1])
    needs = torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad
                                         or (bias is not None and bias.requires_grad))
    return FusedLinearCrossEntropyFunction.apply(x2, weight, target.reshape(-1), bias, ignore_index, needs, vocab,
                                                 float(l2wrap))


def make_inputs(shape, dtype, device, seed):
    N, H, V = shape
    g = generator(device, seed)
    target = torch.randint(0, V, (N,), generator=g, device=device)
    target[torch.rand(N, generator=g, device=device) < 0.1] = -1  # some padding tokens
    return {"x": randn((N, H), dtype, device, g), "weight": randn((V, H), dtype, device, g, scale=H ** -0.5),
            "target": target, "bias": randn((V,), dtype, device, g, scale=0.1), "ignore_index": -1}


KERNEL = register(Kernel(
    name="fused_linear_ce", title="final linear + cross-entropy, chunked: no (tokens x vocab) logits",
    reference=reference, fused=fused_linear_cross_entropy, make_inputs=make_inputs,
    dims="tokens x hidden x vocab",
    # cpu: normal, awkward, and a large vocabulary where the memory saving shows (--all-shapes)
    shapes={"cpu": [(128, 64, 2048), (37, 45, 1003), (512, 32, 8192)], "gpu": [(8 * 1024, 768, 50257)]},
))
