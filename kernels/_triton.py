"""Triton for the kernel files: imported once, after the choice between compiling and interpreting.

`@triton.jit` decides when it decorates a kernel whether Triton compiles it for the GPU or runs it through
its CPU interpreter (TRITON_INTERPRET=1), and the models import the kernel files for their PyTorch
references, so a kernel is decorated as soon as a model is imported. Every kernel file therefore takes
`triton` and `tl` from here, and this module makes the choice first: a run that asks for the interpreter
(COCKPIT_TRITON_INTERPRET=1) on a machine without CUDA gets it, as `kernels.integrate.backend()` would
decide (a visible GPU keeps the compiled kernels).

Triton is an optional extra (pip install 'cockpit[triton]'). Without it `triton` and `tl` are stand-ins:
the kernel files still import and their `@triton.jit` still decorates, so the PyTorch references work; the
first use of a fused kernel raises ModuleNotFoundError saying what to install (`backend()` never gets there:
it falls back to the references).
"""
from __future__ import annotations

import os

import torch

from kernels import interpreter_requested, use_interpreter

if interpreter_requested() and not torch.cuda.is_available():
    use_interpreter()

NOT_INSTALLED = "Triton is not installed (pip install 'cockpit[triton]')"


def _missing():
    raise ModuleNotFoundError(f"{NOT_INSTALLED}: the fused kernels need it; the PyTorch references do not")


class _NotInstalled:
    """`triton` and `triton.language` without Triton: decorating works, anything else says what is missing."""

    def jit(self, fn=None, **options):
        return self if fn is not None else (lambda fn: self)

    def __getattr__(self, name):  # triton.cdiv, tl.float32, ...
        if name.startswith("__"):  # copy, pickle and introspection probe dunders: the usual answer
            raise AttributeError(name)
        _missing()

    def __getitem__(self, grid):  # kernel[grid](...): a launch
        _missing()

    def __call__(self, *args, **kwargs):
        _missing()


# Triton 3.9 warns once per process that the default of FP fusion (a*b+c as one FMA) will change; the kernels'
# tolerances were set with it on, so it stays on, said here rather than in every user's terminal.
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
try:
    import triton
    import triton.language as tl

    INSTALLED = True
except ImportError:
    triton = tl = _NotInstalled()
    INSTALLED = False


@triton.jit
def dot(a, b, PREC: tl.constexpr, UPCAST: tl.constexpr):
    """tl.dot(a, b) accumulating in fp32, with fp32 operands at input precision PREC ("ieee" exact, "tf32").
    UPCAST (the wrappers pass `interpreting()` for 16-bit operands): Triton's CPU interpreter multiplies
    bf16 operands as their raw 16-bit patterns (np.matmul on the uint16 storage), so there they are widened to
    fp32 first; a bf16 x bf16 product is exact in fp32, so this is what the tensor cores compute."""
    if UPCAST:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    return tl.dot(a, b, input_precision=PREC)
