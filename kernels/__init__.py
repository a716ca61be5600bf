"""Fused kernels: one file per kernel (PyTorch reference, Triton fused forward/backward, autograd.Function,
input maker, tolerances). `python -m kernels.bench` compares them with their PyTorch references.

This package file stays free of torch and triton imports: the cockpit CLI reads the kernel names from here
to validate `cockpit kernels --only NAME` without paying for `import torch`.
"""
from __future__ import annotations

import os

# kernel name -> module in this package, in table order.
MODULES: dict[str, str] = {
    "rmsnorm": "rmsnorm",
    "layernorm": "layernorm",
    "softmax": "softmax",
    "softmax_causal": "softmax",
    "gelu": "gelu",
    "swiglu": "swiglu",
    "rope": "rope",
    "fused_linear_ce": "fused_linear_ce",
    "bitlinear": "bitlinear",
    "selective_scan": "selective_scan",
    "wkv": "wkv",
    "retention": "retention",
}
NAMES: tuple[str, ...] = tuple(MODULES)
# CUDA architectures the kernels compile for without a GPU (kernels/targets.py; `cockpit kernels --compile`)
TARGETS: tuple[str, ...] = ("sm_80", "sm_86", "sm_89", "sm_90")


def _truthy(name: str) -> bool:
    return os.environ.get(name, "").lower() in ("1", "true", "on", "yes")


def interpreting() -> bool:
    """True when Triton runs kernels through its CPU interpreter (TRITON_INTERPRET=1)."""
    return _truthy("TRITON_INTERPRET")


def interpreter_requested() -> bool:
    """True when the run asks for the fused kernels through the interpreter where no CUDA device is visible
    (COCKPIT_TRITON_INTERPRET=1; see kernels/integrate.py `backend`)."""
    return _truthy("COCKPIT_TRITON_INTERPRET")


def use_interpreter() -> None:
    """Route Triton through its CPU interpreter. Must run before any kernel module is imported, because
    `@triton.jit` decides at decoration time whether a kernel is compiled or interpreted (kernels/_triton.py)."""
    os.environ["TRITON_INTERPRET"] = "1"
