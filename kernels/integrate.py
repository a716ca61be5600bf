"""Fused kernels for the models (`kernels: triton` in a preset), with a PyTorch fallback.

Models call these functions in place of their PyTorch ops when their Config says `kernels="triton"`:

    from kernels import integrate as fused
    x = fused.layer_norm(x, weight, bias, eps)            # F.layer_norm
    x = fused.rms_norm(x, weight, eps)                    # F.rms_norm
    x = fused.gelu_tanh(x)                                # F.gelu(x, approximate="tanh")
    x = fused.swiglu(gate, up)                            # F.silu(gate) * up
    x = fused.rope(x, cos, sin)                           # rotate-half RoPE, x (B, T, H, D)
    x = fused.rope_pairs(x, pos)                          # RoFormer's interleaved pairs, x (..., T, D)
    loss = fused.linear_cross_entropy(x, W, targets)      # F.cross_entropy(F.linear(x, W), targets, ignore -1)
    y = fused.bitlinear(x, w)                             # BitNet b1.58 quantised linear (STE backward)
    y, h = fused.selective_scan(u, delta, A, B, C, D)     # kernels/selective_scan.py selective_scan_chunked
    y, s = fused.wkv(r, k, v, log_w, u)                   # kernels/wkv.py wkv_chunked
    y, s = fused.retention(q, k, v, gamma)                # kernels/retention.py retention_chunkwise
and build their norms from the modules here (`LayerNorm`, `RMSNorm`, with `fused=` their kernels choice),
the one place a model's norm switches between PyTorch and the fused kernel.

Which implementation runs is decided once per process by `backend()`:
    "triton"       CUDA is visible and Triton imports: the fused kernels run on CUDA tensors.
    "interpreter"  no CUDA, but COCKPIT_TRITON_INTERPRET=1: the same kernels through Triton's CPU
                   interpreter (slow; for tests of the fused path on CPU).
    "torch"        otherwise: the PyTorch code the kernels are tested against, and ONE log line (logger
                   "kernels", plus `on_fallback` callbacks) saying why.
A call whose tensors are not on a device the backend serves (CPU tensors with backend "triton") uses
the PyTorch code too, so a model moved between devices keeps working.

The kernel files (and Triton) are imported when an op first needs them, not with this module: a GPT with
kernels="torch" imports this module for its LayerNorm without paying for Triton.
"""
from __future__ import annotations

import contextlib
import logging
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from kernels import interpreter_requested, interpreting, use_interpreter
from kernels.logits import cross_entropy, mask_padding

log = logging.getLogger("kernels")

_BACKEND: str | None = None
_REASON = ""
_META_LAUNCHES = False  # launches_on_meta(): the fused ops take meta tensors (their launches are recorded)
_fallback_listeners: list[Callable[[str], None]] = []


def backend() -> str:
    """'triton', 'interpreter' or 'torch' (see the module docstring); decided once, logged once."""
    global _BACKEND, _REASON
    if _BACKEND is not None:
        return _BACKEND
    from kernels import _triton

    if not _triton.INSTALLED:
        _BACKEND, _REASON = "torch", _triton.NOT_INSTALLED
    elif torch.cuda.is_available() and not interpreting():
        _BACKEND = "triton"
    elif interpreter_requested():
        use_interpreter()
        _BACKEND = "interpreter"
    elif torch.cuda.is_available():
        _BACKEND, _REASON = "torch", "TRITON_INTERPRET=1 is set, so Triton cannot compile for the GPU"
    else:
        _BACKEND, _REASON = "torch", "no CUDA device is visible"
    if _BACKEND == "torch":
        log.warning(_fallback_message())
        for fn in _fallback_listeners:
            fn(_fallback_message())
    return _BACKEND


def _fallback_message() -> str:
    return f"kernels: triton requested but {_REASON}; using the PyTorch implementations instead"


def on_fallback(fn: Callable[[str], None]) -> None:
    """Call fn(message) if (and when) `backend()` falls back to PyTorch, e.g. to write a `log` event."""
    _fallback_listeners.append(fn)
    if _BACKEND == "torch":
        fn(_fallback_message())


def describe() -> str:
    """One line for the run log: which kernels a `kernels: triton` run is really using."""
    b = backend()
    if b == "triton":
        return f"kernels: fused Triton kernels on {torch.cuda.get_device_name()}"
    if b == "interpreter":
        return "kernels: fused Triton kernels through the CPU interpreter (TRITON_INTERPRET=1; slow)"
    return _fallback_message()


def _reset_for_tests() -> None:
    global _BACKEND, _REASON
    _BACKEND, _REASON = None, ""


def tf32_matmuls(device: torch.device) -> bool:
    """On a CUDA device, let float32 matmuls use TF32 tensor cores (fp32 range, 10-bit mantissa inputs, fp32
    accumulation), as nanoGPT's train.py and the QLoRA reference script set allow_tf32: an fp32 run (or the
    fp32 matmuls of a bf16 one) runs on tensor cores instead of the ~8x slower IEEE path. Elsewhere nothing
    changes (on a CPU "high" may select reduced-precision paths of its own). True when it was set."""
    if device.type != "cuda":
        return False
    torch.set_float32_matmul_precision("high")
    return True


@contextlib.contextmanager
def launches_on_meta():
    """Inside, the fused ops take meta tensors too, so that a model run on the meta device goes through every
    kernel launch its kernels="triton" run would make (kernels/targets.py records them; nothing runs)."""
    global _META_LAUNCHES
    saved, _META_LAUNCHES = _META_LAUNCHES, True
    try:
        yield
    finally:
        _META_LAUNCHES = saved


def use_fused(*tensors: torch.Tensor) -> bool:
    """True when the fused kernels can run on these tensors. Meta tensors (shape and memory inspection,
    `cockpit presets`) take the PyTorch path, without deciding or logging anything, except inside
    `launches_on_meta`."""
    if any(t.device.type == "meta" for t in tensors):
        return _META_LAUNCHES
    b = backend()
    if b == "triton":
        return all(t.is_cuda for t in tensors)
    if b == "interpreter":
        return all(t.device.type == "cpu" for t in tensors)
    return False


# ---------------------------------------------------------------------------------------------- ops
def layer_norm(x, weight, bias=None, eps: float = 1e-5):
    if use_fused(x, weight):
        from kernels.layernorm import layer_norm as fused

        return fused(x, weight, bias, eps)
    return F.layer_norm(x, weight.shape, weight, bias, eps)


def rms_norm(x, weight, eps: float = 1e-6):
    if use_fused(x, weight):
        from kernels.rmsnorm import rms_norm as fused

        return fused(x, weight, eps)
    return F.rms_norm(x, weight.shape, weight, eps)


def gelu_tanh(x):
    if use_fused(x):
        from kernels.gelu import gelu_tanh as fused

        return fused(x)
    return F.gelu(x, approximate="tanh")


def swiglu(gate, up):
    if use_fused(gate, up):
        from kernels.swiglu import swiglu as fused

        return fused(gate, up)
    return F.silu(gate) * up


def softmax(x):
    if use_fused(x):
        from kernels.softmax import softmax as fused

        return fused(x)
    return torch.softmax(x, dim=-1)


def causal_softmax(x):
    if use_fused(x):
        from kernels.softmax import causal_softmax as fused

        return fused(x)
    T = x.shape[-1]
    future = torch.ones(T, T, dtype=torch.bool, device=x.device).triu(1)
    return torch.softmax(x.masked_fill(future, float("-inf")), dim=-1)


def rope(x, cos, sin):
    """x (B, T, H, D) rotated by cos/sin (T, D/2), rotate-half layout (see kernels/rope.py `rope_cache`)."""
    if use_fused(x):
        from kernels.rope import rope as fused

        return fused(x, cos, sin)
    x1, x2 = x.chunk(2, dim=-1)
    c, s = cos[:, None, :].to(x.dtype), sin[:, None, :].to(x.dtype)
    return torch.cat([x1 * c - x2 * s, x2 * c + x1 * s], dim=-1)


def rope_pairs(x, pos, base: float = 10000.0):
    """x (..., T, D) rotated at positions pos (T,) over the interleaved pairs (x0, x1), (x2, x3), ... (RoFormer's
    layout, BitNet's and RetNet's; kernels/rope.py `rope_pairs`)."""
    from kernels.rope import rope_pairs as reference, rope_pairs_fused

    if use_fused(x, pos):
        return rope_pairs_fused(x, pos, base)
    return reference(x, pos, base)


def linear_cross_entropy(x, weight, target, bias=None, ignore_index: int = -1, vocab: int | None = None,
                         l2wrap: float = 0.0):
    """Mean cross-entropy of x @ weight^T (+ bias) against target; the fused path never builds the logits.
    vocab: the classes are weight's first `vocab` rows (the rest pad the vocabulary; None: all); l2wrap:
    RWKV-LM's L2Wrap factor (kernels/logits.py)."""
    if use_fused(x, weight):
        from kernels.fused_linear_ce import fused_linear_cross_entropy as fused

        return fused(x, weight, target, bias, ignore_index, vocab, l2wrap)
    return cross_entropy(mask_padding(F.linear(x, weight, bias), vocab), target, ignore_index, l2wrap)


def bitlinear(x, weight, eps: float = 1e-5):
    """BitNet b1.58 linear: ternary absmean weights x int8 absmax activations (see kernels/bitlinear.py)."""
    if use_fused(x, weight):
        from kernels.bitlinear import bitlinear as fused

        return fused(x, weight, eps)
    from kernels.bitlinear import bitlinear_ref

    return bitlinear_ref(x, weight, eps)


def selective_scan(u, delta, A, B, C, D, h0=None, chunk=None):
    if use_fused(u, delta, A, B, C, D):
        from kernels.selective_scan import selective_scan as fused

        return fused(u, delta, A, B, C, D, h0)
    from kernels.selective_scan import selective_scan_chunked

    return selective_scan_chunked(u, delta, A, B, C, D, h0, chunk=chunk)


def wkv(r, k, v, log_w, u, state=None, chunk: int = 16):
    if use_fused(r, k, v, log_w, u):
        from kernels.wkv import wkv as fused

        return fused(r, k, v, log_w, u, state)
    from kernels.wkv import wkv_chunked

    return wkv_chunked(r, k, v, log_w, u, state, chunk=chunk)


def retention(q, k, v, gamma, state=None, chunk: int = 64):
    """RetNet retention of q, k (B, H, T, dk), v (B, H, T, dv) with per-head decays gamma (H,)."""
    if use_fused(q, k, v):
        from kernels.retention import retention as fused

        return fused(q, k, v, gamma, state)
    from kernels.retention import retention_chunkwise

    return retention_chunkwise(q, k, v, gamma, chunk, state)


# ------------------------------------------------------------------------------------------ modules
def kernel_dtype(x) -> torch.dtype:
    """The dtype a fused kernel with fp32 accumulation takes its operands in: the autocast dtype where
    autocast is on for x's device (bf16 on a GPU run; CPU autocast in tests), else x's own if it is a 16-bit
    float (a model cast to bf16), else float32."""
    kind = x.device.type
    if kind in ("cuda", "cpu") and torch.is_autocast_enabled(kind):
        return torch.get_autocast_dtype(kind)
    return x.dtype if x.dtype in (torch.bfloat16, torch.float16) else torch.float32


def fp32(x):
    """A region where autocast is off (matmuls inside stay fp32 on a bf16-autocast GPU run): the recurrences
    (selective scan, WKV, retention) run in it, their exps and long products being precision-sensitive."""
    return torch.autocast("cuda" if x.is_cuda else "cpu", enabled=False)


class LayerNorm(nn.Module):
    """LayerNorm over the last dimension, bias optional; parameters `weight` and `bias` as nn.LayerNorm's
    (checkpoints and GPT-2 weights load). fused=True (a model's kernels="triton") runs the fused kernel
    where `backend()` serves the tensors; otherwise F.layer_norm."""

    def __init__(self, ndim: int, bias: bool = True, eps: float = 1e-5, fused: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ndim))
        self.bias = nn.Parameter(torch.zeros(ndim)) if bias else None
        self.eps, self.fused = eps, fused

    def forward(self, x):
        if self.fused:
            return layer_norm(x, self.weight, self.bias, self.eps)
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, self.eps)


class RMSNorm(nn.Module):
    """RMSNorm over the last dimension with a gain `weight`; fused=True as in `LayerNorm`, else F.rms_norm."""

    def __init__(self, ndim: int, eps: float = 1e-5, fused: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ndim))
        self.eps, self.fused = eps, fused

    def forward(self, x):
        if self.fused:
            return rms_norm(x, self.weight, self.eps)
        return F.rms_norm(x, self.weight.shape, self.weight, self.eps)


class GELUTanh(nn.Module):
    def forward(self, x):
        return gelu_tanh(x)
