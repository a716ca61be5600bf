"""The common harness: kernel registry, correctness check, timing and peak memory.

Every kernel file registers one `Kernel`: a differentiable PyTorch `reference`, the `fused` Triton op
(an autograd.Function behind a plain function), an input maker and per-dtype tolerances. `check` runs both
on the same inputs and compares outputs and input gradients; `run_case` adds timings and peak memory and
returns the fields of one `kernel` event (docs/events.md).

Correctness is judged against the reference evaluated in float32 on the same (up-cast) inputs, so a bf16
kernel is compared with the exact answer, not with PyTorch's own bf16 rounding. Two errors per tensor:
    max abs err  = max |out - ref|
    rel RMS err  = ||out - ref||_2 / ||ref||_2        (flash-linear-attention's `get_err_ratio`)
A tensor passes when rel RMS err <= tol.rms and max abs err <= tol.max * max|ref| (so one wrong row in a
big tensor cannot hide inside a small RMS).

Timing: on CUDA `triton.testing.do_bench` (median, CUDA events: the device's own clock). On CPU the Triton
kernels run through the interpreter (TRITON_INTERPRET=1, numpy per program instance), so timings are
wall-clock medians that say nothing about a GPU; every such result carries `timing: "interpreter"` and a note
saying so, and so does a CUDA run whose Triton kernels were interpreted (TRITON_INTERPRET=1 set by hand).

Peak memory: on CUDA `torch.cuda.max_memory_allocated` above the allocated baseline. On CPU the torch
profiler's allocation events (`profile_memory=True`): the running sum of allocated minus freed bytes of
the CPU allocator, peak above the level at the start. The interpreter keeps block values in numpy arrays
(the interpreter's stand-in for registers), which the torch allocator does not see, so the CPU figure is
what the kernel's tensors would occupy in device memory.
"""
from __future__ import annotations

import contextlib
import importlib
import math
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from kernels import MODULES, NAMES, interpreting


@dataclass(frozen=True)
class Tolerance:
    rms: float   # bound on the relative RMS error
    max: float   # bound on the max abs error, relative to max |ref|


# Liger-Kernel / flash-linear-attention style: fp32 tight, bf16 loose. bf16 has an 8-bit significand
# (rounding error up to 2^-9 relative); Triton's CPU interpreter also truncates fp32 -> bf16 casts instead
# of rounding to nearest (GPU), which doubles that and biases it, so the bf16 bound leaves room for both.
FP32 = Tolerance(rms=1e-5, max=1e-4)
BF16 = Tolerance(rms=2e-2, max=5e-2)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


@dataclass
class Kernel:
    name: str
    title: str                      # one line: what it computes
    reference: Callable[..., Any]   # PyTorch, differentiable; keyword arguments from make_inputs
    fused: Callable[..., Any]       # the Triton op, same arguments and outputs
    make_inputs: Callable[..., dict]  # (shape, dtype, device, seed) -> {arg name: tensor or value}
    shapes: dict[str, list[tuple]]  # "cpu": [normal, awkward] (interpreter-sized), "gpu": preset shapes
    dims: str                       # what the shape numbers mean, e.g. "tokens x hidden"
    tol: dict[torch.dtype, Tolerance] = field(default_factory=lambda: {torch.float32: FP32,
                                                                        torch.bfloat16: BF16})
    baseline: Callable[..., Any] | None = None  # the PyTorch path that is timed, when it is not `reference`

    @property
    def torch_op(self) -> Callable[..., Any]:
        return self.baseline or self.reference


_REGISTRY: dict[str, Kernel] = {}


def register(kernel: Kernel) -> Kernel:
    _REGISTRY[kernel.name] = kernel
    return kernel


def get(name: str) -> Kernel:
    if name not in MODULES:
        raise KeyError(f"unknown kernel '{name}'; kernels: {', '.join(NAMES)}")
    if name not in _REGISTRY:
        importlib.import_module(f"kernels.{MODULES[name]}")
    return _REGISTRY[name]


def all_kernels() -> list[Kernel]:
    return [get(n) for n in NAMES]


# ------------------------------------------------------------------------------------------- launches
def next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def row_tiles(M: int, N: int, max_n: int = 65536) -> tuple[int, int, int]:
    """(BLOCK_M, BLOCK_N, num_warps) for a row-wise kernel holding whole rows of N in one tile.

    The interpreter pays per block operation, not per element, so it gets tall tiles (few programs);
    a GPU gets ~4K-element tiles so that a 768-wide GPT-2 row keeps 4 rows per program."""
    BLOCK_N = next_pow2(N)
    if BLOCK_N > max_n:
        raise ValueError(f"rows of {N} elements exceed this kernel's single-tile limit of {max_n}")
    budget = 1 << 14 if interpreting() else 1 << 12
    BLOCK_M = max(1, min(budget // BLOCK_N, next_pow2(M)))
    num_warps = 4 if BLOCK_M * BLOCK_N <= 4096 else 8 if BLOCK_M * BLOCK_N <= 16384 else 16
    return BLOCK_M, BLOCK_N, num_warps


def n_programs(n_tiles: int, device: torch.device) -> int:
    """Programs for a persistent kernel that strides over `n_tiles` (reductions into per-program partials)."""
    if device.type == "cuda":
        sms = torch.cuda.get_device_properties(device).multi_processor_count
        return max(1, min(n_tiles, 4 * sms))
    return max(1, min(n_tiles, 4))


# --------------------------------------------------------------------------------------------- inputs
def generator(device, seed: int) -> torch.Generator | None:
    """A seeded generator on `device`; None on the meta device (its tensors have shapes, not values)."""
    if torch.device(device).type == "meta":
        return None
    g = torch.Generator(device=torch.device(device))
    g.manual_seed(seed)
    return g


def randn(shape, dtype, device, g, scale: float = 1.0, requires_grad: bool = True) -> torch.Tensor:
    t = torch.randn(shape, generator=g, device=device, dtype=torch.float32) * scale
    return t.to(dtype).requires_grad_(requires_grad)


def _clone(inputs: dict, upcast: bool) -> dict:
    out = {}
    for k, v in inputs.items():
        if isinstance(v, torch.Tensor):
            t = v.detach()
            t = t.float() if upcast and t.is_floating_point() else t.clone()
            out[k] = t.requires_grad_(v.requires_grad)
        else:
            out[k] = v
    return out


def _as_tuple(out) -> tuple:
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


# ---------------------------------------------------------------------------------------- correctness
def errors(out: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    """(max abs err, rel RMS err) of `out` against `ref`; inf when either is non-finite or shapes differ."""
    if out.shape != ref.shape:
        return math.inf, math.inf
    out, ref = out.detach().float(), ref.detach().float()
    if out.numel() == 0:
        return 0.0, 0.0
    if not torch.isfinite(out).all() or not torch.isfinite(ref).all():
        return math.inf, math.inf
    diff = out - ref
    max_abs = diff.abs().max().item()
    base = ref.pow(2).mean().sqrt().item()
    rms = diff.pow(2).mean().sqrt().item()
    return max_abs, (rms / base if base > 0 else (0.0 if rms == 0 else math.inf))


@dataclass
class Check:
    ok: bool
    max_abs_err: float        # forward outputs, worst over outputs
    rel_rms_err: float
    grad_max_abs_err: float   # input gradients, worst over inputs
    grad_rel_rms_err: float
    worst: str                # the tensor furthest beyond (or closest to) its tolerance
    tensors: list[dict]       # per tensor: name, max_abs_err, rel_rms_err, ok


def compare(pairs: list[tuple[str, torch.Tensor, torch.Tensor]], tol: Tolerance) -> Check:
    rows, worst, worst_ratio = [], "", -1.0
    agg = {"out": [0.0, 0.0], "grad": [0.0, 0.0]}
    for name, out, ref in pairs:
        max_abs, rel = errors(out, ref)
        scale = ref.detach().float().abs().max().item() if ref.numel() else 0.0
        max_bound = tol.max * max(scale, 1e-6)
        ok = rel <= tol.rms and max_abs <= max_bound
        ratio = max(rel / tol.rms, max_abs / max_bound)
        if ratio > worst_ratio:
            worst, worst_ratio = name, ratio
        kind = "grad" if name.startswith("grad ") else "out"
        agg[kind][0] = max(agg[kind][0], max_abs)
        agg[kind][1] = max(agg[kind][1], rel)
        rows.append({"name": name, "max_abs_err": max_abs, "rel_rms_err": rel, "ok": ok})
    return Check(all(r["ok"] for r in rows), agg["out"][0], agg["out"][1], agg["grad"][0], agg["grad"][1],
                 worst, rows)


def check(kernel: Kernel, shape: tuple, dtype: torch.dtype, device="cpu", seed: int = 0) -> Check:
    """Run reference (fp32) and fused kernel on the same inputs; compare outputs and input gradients."""
    inputs = kernel.make_inputs(shape, dtype, device, seed)
    ref_in, fused_in = _clone(inputs, upcast=True), _clone(inputs, upcast=False)
    ref_out = _as_tuple(kernel.reference(**ref_in))
    out = _as_tuple(kernel.fused(**fused_in))
    if len(out) != len(ref_out):
        raise AssertionError(f"{kernel.name}: fused op returned {len(out)} outputs, reference {len(ref_out)}")
    g = generator(device, seed + 1)
    # cotangents rounded to the fused output's dtype, so both sides back-propagate the same numbers
    cots = [torch.randn(r.shape, generator=g, device=device).to(o.dtype).float() for r, o in zip(ref_out, out)]
    pairs = [(f"out {i}" if len(out) > 1 else "out", o, r) for i, (o, r) in enumerate(zip(out, ref_out))]
    want = [k for k, v in inputs.items() if isinstance(v, torch.Tensor) and v.requires_grad]
    if want:
        diff_ref = [(r, c) for r, c in zip(ref_out, cots) if r.requires_grad]
        diff_out = [(o, c.to(o.dtype)) for o, c in zip(out, cots) if o.requires_grad]
        ref_grads = torch.autograd.grad([r for r, _ in diff_ref], [ref_in[k] for k in want],
                                        [c for _, c in diff_ref], allow_unused=True)
        grads = torch.autograd.grad([o for o, _ in diff_out], [fused_in[k] for k in want],
                                    [c for _, c in diff_out], allow_unused=True)
        for k, gr, gf in zip(want, ref_grads, grads):
            gr = torch.zeros_like(ref_in[k]) if gr is None else gr
            gf = torch.zeros_like(fused_in[k]) if gf is None else gf
            pairs.append((f"grad {k}", gf, gr))
    return compare(pairs, kernel.tol[dtype])


# -------------------------------------------------------------------------------------- time, memory
def _sync(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_ms(fn: Callable[[], Any], device: torch.device, reps: int = 1, budget_s: float = 0.2) -> float:
    """Median milliseconds of `fn()`: on a CUDA device CUDA events via do_bench (the host clock would time
    kernel launches, not kernels); on CPU wall clock (perf_counter), at least `reps` runs and more while
    under `budget_s` (so sub-millisecond PyTorch ops get a stable median and slow interpreted kernels are
    not repeated needlessly), at most 100."""
    if device.type == "cuda":
        import triton.testing

        return float(triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median"))
    fn()  # warm-up: interpreter set-up, allocator
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < max(1, reps) or (time.perf_counter() - start < budget_s and len(times) < 100):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


@contextlib.contextmanager
def _quiet_stderr():
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def peak_bytes(fn: Callable[[], Any], device: torch.device) -> int:
    """Peak bytes allocated by `fn()` above what was allocated before it (see module docstring)."""
    if device.type == "cuda":
        _sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        _sync(device)
        return int(torch.cuda.max_memory_allocated(device) - base)
    from torch.profiler import ProfilerActivity, profile

    with _quiet_stderr():  # kineto prints profiler_start/stop lines on fd 2
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            fn()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]" and e.device_type()
              == torch.autograd.DeviceType.CPU]
    level = peak = 0
    for e in sorted(events, key=lambda e: e.start_ns()):
        level += e.nbytes()
        peak = max(peak, level)
    return int(peak)


def training_step(op: Callable, inputs: dict, cots: list[torch.Tensor] | None):
    """A closure running forward + backward of `op` (gradients via autograd.grad, nothing accumulates)."""
    want = [v for v in inputs.values() if isinstance(v, torch.Tensor) and v.requires_grad]

    def step():
        outs = [o for o in _as_tuple(op(**inputs)) if o.requires_grad]
        if want and outs:
            torch.autograd.grad(outs, want, cots[: len(outs)], allow_unused=True)

    return step


# ---------------------------------------------------------------------------------------------- cases
def gpu_timed(device: torch.device) -> bool:
    """True when the Triton side is compiled for a CUDA device and timed on its clock; False when it runs
    in Triton's interpreter (always on CPU; on CUDA when TRITON_INTERPRET=1), whose timings say nothing
    of a GPU."""
    return device.type == "cuda" and not interpreting()


def backend_name(device: torch.device) -> str:
    return "triton" if gpu_timed(device) else "triton-interpreter"


def device_label(device: torch.device) -> str:
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        return name if gpu_timed(device) else f"{name}, Triton interpreter"
    return f"CPU ({platform.processor() or platform.machine()}), Triton interpreter"


INTERPRETER_NOTE = "interpreter timings, not GPU timings"


def how_measured(device: torch.device) -> dict[str, str]:
    """The fields of a `kernel` event that say where and how it was measured (docs/events.md)."""
    fields = {"backend": backend_name(device), "device": device_label(device),
              "timing": "cuda" if gpu_timed(device) else "interpreter",
              "mem_method": ("torch.cuda.max_memory_allocated" if device.type == "cuda"
                             else "torch.profiler CPU allocation events")}
    if not gpu_timed(device):
        fields["note"] = INTERPRETER_NOTE
    return fields


def _measure(ev: dict, side: str, op, inputs: dict, cots: list, device: torch.device, reps: int) -> None:
    step = training_step(op, inputs, cots)
    ev[f"{side}_fwd_ms"] = time_ms(lambda: op(**inputs), device, reps)
    ev[f"{side}_ms"] = time_ms(step, device, reps)  # forward + backward
    ev[f"{side}_mem"] = peak_bytes(step, device)


def run_case(kernel: Kernel, shape: tuple, dtype: torch.dtype, device, reps: int = 1, seed: int = 0,
             compile: bool = False) -> dict:
    """Check one (kernel, shape, dtype) and time/measure both sides: the fields of a `kernel` event."""
    device = torch.device(device)
    ev: dict[str, Any] = {"name": kernel.name, "shape": list(shape), "dims": kernel.dims,
                          "dtype": str(dtype).replace("torch.", ""), **how_measured(device)}
    try:
        c = check(kernel, shape, dtype, device, seed)
        ev.update(ok=c.ok, max_abs_err=c.max_abs_err, rel_rms_err=c.rel_rms_err,
                  grad_max_abs_err=c.grad_max_abs_err, grad_rel_rms_err=c.grad_rel_rms_err, worst=c.worst,
                  tol_rms=kernel.tol[dtype].rms, tol_max=kernel.tol[dtype].max)
        inputs = kernel.make_inputs(shape, dtype, device, seed)
        outs = _as_tuple(kernel.torch_op(**inputs))
        g = generator(device, seed + 1)
        cots = [torch.randn(o.shape, generator=g, device=device, dtype=o.dtype) for o in outs]
        del outs
        for side, op in (("torch", kernel.torch_op), ("triton", kernel.fused)):
            _measure(ev, side, op, inputs, cots, device, reps)
        ev["speedup"] = ev["torch_ms"] / ev["triton_ms"] if ev["triton_ms"] > 0 else None
        ev["mem_saving"] = 1.0 - ev["triton_mem"] / ev["torch_mem"] if ev["torch_mem"] > 0 else None
        if compile:  # torch.compile of the same PyTorch code; its failure is reported, not the kernel's
            try:
                _measure(ev, "compile", torch.compile(kernel.torch_op), inputs, cots, device, reps)
            except Exception as e:  # noqa: BLE001
                ev["compile_ms"] = None
                ev["compile_error"] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    except Exception as e:  # a kernel that crashes is a failed row, not a crashed benchmark
        ev.update(ok=False, error=f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
        for k in ("max_abs_err", "torch_ms", "triton_ms", "torch_mem", "triton_mem"):
            ev.setdefault(k, None)
    return ev
