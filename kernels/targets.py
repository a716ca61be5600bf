"""The fused kernels compiled for a CUDA GPU that is not there: registers, spills and shared memory of every
launch, against the limits of the architecture.

Triton compiles for a target named by its compute capability, `triton.compile(ASTSource(fn, signature,
constexprs, attrs), target=GPUTarget("cuda", 89, 32))`, with no GPU and no CUDA driver: the PTX goes through
the ptxas Triton ships, and the cubin's resource usage is read with its cuobjdump. So a machine without a GPU
can tell whether a kernel compiles for an RTX 4070 or an H100 at the shapes a preset launches it with, and
whether it spills registers to local memory or asks for more shared memory than one block may have.

Which launches: `recording()` runs code (a model's forward and backward on the meta device, a kernel's
training step on meta inputs) with the fused ops switched on for meta tensors and Triton's launcher replaced
by a recorder: every `kernel[grid](...)` the wrappers would make is kept, with its real arguments, and
nothing runs. `compile_launch` then binds those arguments exactly as Triton's launcher does (its signature,
specialisations such as 16-byte alignment and the constexprs, its options such as num_warps), compiles for
the target and reads the cubin. A launch is identified by what its compiled code depends on, so each distinct
kernel variant compiles once.

Limits (NVIDIA's CUDA C++ Programming Guide, "Technical Specifications per Compute Capability"): 255 registers
per thread and 64K per block, and the shared memory one block may have (the opt-in maximum, a little below
the SM's: 163 KB of 164 on sm_80, 99 KB of 100 on sm_86 and sm_89, 227 KB of 228 on sm_90).

Triton's interpreter must be off (TRITON_INTERPRET unset) when the kernel files are imported, since
`@triton.jit` then makes interpreted functions that cannot compile: run this in a process of its own
(`cockpit kernels --compile ARCH` starts one).
"""
from __future__ import annotations

import contextlib
import re
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from kernels import TARGETS, interpreting


@dataclass(frozen=True)
class Arch:
    name: str            # sm_89
    capability: int      # 89
    gpus: str            # examples, for the report
    smem_per_sm: int     # bytes of shared memory per SM
    smem_per_block: int  # bytes one block may use (the opt-in maximum)
    regs_per_thread: int = 255
    regs_per_block: int = 65536


KB = 1024
ARCHS: dict[str, Arch] = {a.name: a for a in (
    Arch("sm_80", 80, "A100, A30", 164 * KB, 163 * KB),
    Arch("sm_86", 86, "RTX 30xx, A10, A40", 100 * KB, 99 * KB),
    Arch("sm_89", 89, "RTX 40xx (4070: 12 GB), L4, L40", 100 * KB, 99 * KB),
    Arch("sm_90", 90, "H100, H200, GH200", 228 * KB, 227 * KB),
)}
assert tuple(ARCHS) == TARGETS


SHORT_DTYPES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


@dataclass
class Launch:
    """One `kernel[grid](*args, **kwargs)` the wrappers made, and where it came from."""
    fn: Any                  # the JITFunction
    args: tuple
    kwargs: dict
    source: str = ""         # a preset name, or "bench" for a kernel's registered GPU shape

    @property
    def name(self) -> str:
        return self.fn.__name__

    @property
    def module(self) -> str:
        return self.fn.__module__.rsplit(".", 1)[-1]

    def sizes(self) -> str:
        """The launch's integer arguments (rows, widths, lengths ...), named: what the shape was."""
        names = [p.name for p in self.fn.params]
        return " ".join(f"{n}={v}" for n, v in zip(names, self.args) if isinstance(v, int) and not isinstance(v, bool))

    def dtype(self) -> str:
        """The dtypes of the tensor arguments, e.g. "bf16" or "fp32+i8"."""
        seen = []
        for a in self.args:
            if isinstance(a, torch.Tensor) and a.is_floating_point():
                short = SHORT_DTYPES.get(a.dtype, str(a.dtype))
                if short not in seen:
                    seen.append(short)
        return "+".join(seen) or "-"


# ---------------------------------------------------------------------------------------------- recording
@contextlib.contextmanager
def recording():
    """Inside, every Triton launch is appended to the list this yields instead of running, and the fused ops
    take meta tensors (kernels/integrate.py `launches_on_meta`); torch's fp32 matmul precision is a CUDA
    trainer's ("high", kernels/integrate.py tf32_matmuls), which some wrappers read to pick their variant."""
    if interpreting():
        raise RuntimeError("TRITON_INTERPRET=1 is set: the kernels are interpreted functions and cannot be "
                           "compiled for a GPU; run without it (cockpit kernels --compile starts such a process)")
    from triton.runtime.jit import JITFunction

    from kernels import integrate

    launches: list[Launch] = []

    def record(self, *args, grid, warmup, **kwargs):
        launches.append(Launch(self, args, kwargs))

    saved_run, saved_precision = JITFunction.run, torch.get_float32_matmul_precision()
    JITFunction.run = record
    torch.set_float32_matmul_precision("high")
    try:
        with integrate.launches_on_meta():
            yield launches
    finally:
        JITFunction.run = saved_run
        torch.set_float32_matmul_precision(saved_precision)


def bench_launches(names, dtypes=(torch.float32, torch.bfloat16)) -> list[Launch]:
    """The launches of each registered kernel's training step (forward and backward) at its GPU shapes."""
    from kernels import _harness as H

    out = []
    for name in names:
        kernel = H.get(name)
        for shape in kernel.shapes["gpu"]:
            for dtype in dtypes:
                with recording() as launches:
                    inputs = kernel.make_inputs(shape, dtype, "meta", 0)
                    outs = H._as_tuple(kernel.fused(**inputs))
                    cots = [torch.empty_like(o) for o in outs]
                    H.training_step(kernel.fused, inputs, cots)()
                for launch in launches:
                    launch.source = f"bench {name} {'x'.join(map(str, shape))}"
                out += launches
    return out


# ---------------------------------------------------------------------------------------------- compiling
@dataclass
class Compiled:
    launch: Launch
    arch: Arch
    regs: int = 0              # registers per thread
    local: int = 0             # bytes of local memory per thread: spills (and a stack frame)
    shared: int = 0            # bytes of shared memory per block: static + what Triton allocates
    num_warps: int = 0
    num_stages: int = 0
    constexprs: dict = field(default_factory=dict)
    error: str = ""

    @property
    def problems(self) -> list[str]:
        if self.error:
            return [f"does not compile: {self.error}"]
        out = []
        if self.local:
            out.append(f"spills: {self.local} B of local memory per thread")
        if self.shared > self.arch.smem_per_block:
            out.append(f"shared memory {self.shared / KB:.1f} KB > {self.arch.smem_per_block // KB} KB per block")
        if self.regs > self.arch.regs_per_thread or self.regs * 32 * self.num_warps > self.arch.regs_per_block:
            out.append(f"{self.regs} registers x {32 * self.num_warps} threads > {self.arch.regs_per_block} per block")
        return out

    @property
    def ok(self) -> bool:
        return not self.problems


def _bind(launch: Launch, backend):
    """Triton's own binding of a launch's arguments (runtime/jit.py JITFunction.run, without a driver):
    (options, signature, constexprs, attrs) as the launcher would compile them."""
    from triton.runtime.jit import create_function_from_signature

    fn = launch.fn
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    kwargs = dict(launch.kwargs)
    bound, specialization, options = binder(*launch.args, **kwargs)
    return fn._pack_args(backend, kwargs, bound, specialization, options)


def variant_key(launch: Launch, arch: Arch) -> tuple:
    """What a launch's compiled code depends on: two launches with the same key share one binary."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import make_backend

    options, signature, constexprs, attrs = _bind(launch, make_backend(GPUTarget("cuda", arch.capability, 32)))
    return (launch.fn.__module__, launch.name, tuple(signature.items()),
            tuple(sorted((k, repr(v)) for k, v in constexprs.items())),
            tuple(sorted((k, repr(v)) for k, v in attrs.items())), options.num_warps, options.num_stages)


_RESOURCES = re.compile(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)")


def compile_launch(launch: Launch, arch: Arch) -> Compiled:
    """Compile one launch for `arch` and read its resource usage from the cubin."""
    import triton
    from triton import knobs
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend

    target = GPUTarget("cuda", arch.capability, 32)
    backend = make_backend(target)
    result = Compiled(launch, arch)
    try:
        options, signature, constexprs, attrs = _bind(launch, backend)
        result.num_warps, result.num_stages = options.num_warps, options.num_stages
        names = [p.name for p in launch.fn.params]
        result.constexprs = {names[k[0]]: v for k, v in constexprs.items() if len(k) == 1}
        kernel = triton.compile(ASTSource(launch.fn, signature, constexprs, attrs), target=target,
                                options=options.__dict__)
    except Exception as e:  # noqa: BLE001 - a kernel that does not compile is a row of the report
        result.error = f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:200]}"
        return result
    with tempfile.TemporaryDirectory() as tmp:
        cubin = Path(tmp) / "kernel.cubin"
        cubin.write_bytes(kernel.asm["cubin"])
        usage = subprocess.run([knobs.nvidia.cuobjdump.path, "--dump-resource-usage", str(cubin)],
                               capture_output=True, text=True, check=True).stdout
    m = _RESOURCES.search(usage)
    if m is None:
        result.error = f"cuobjdump printed no resource usage for {launch.name}"
        return result
    regs, stack, static_shared, local = map(int, m.groups())
    result.regs, result.local = regs, max(local, stack)
    result.shared = static_shared + int(kernel.metadata.shared)
    return result


def compile_all(launches: list[Launch], arch: Arch, progress=None) -> list[tuple[Compiled, list[Launch]]]:
    """Each distinct variant among `launches` compiled once: (its result, the launches that use it)."""
    groups: dict[tuple, list[Launch]] = {}
    for launch in launches:
        groups.setdefault(variant_key(launch, arch), []).append(launch)
    out = []
    for i, same in enumerate(groups.values()):
        if progress:
            progress(i, len(groups), same[0])
        out.append((compile_launch(same[0], arch), same))
    return out


# ---------------------------------------------------------------------------------------------- report
def _sources(same: list[Launch]) -> str:
    seen = []
    for launch in same:
        src = launch.source.split(" ")[0] if launch.source.startswith("bench") else launch.source
        if src not in seen:
            seen.append(src)
    return ", ".join(seen)


def _shapes(same: list[Launch], limit: int = 3) -> str:
    seen = []
    for launch in same:
        if launch.sizes() not in seen:
            seen.append(launch.sizes())
    more = f" (+{len(seen) - limit} more)" if len(seen) > limit else ""
    return "; ".join(seen[:limit]) + more


def _blocks(c: Compiled) -> str:
    parts = [f"{k}={v}" for k, v in c.constexprs.items() if isinstance(v, (int, str)) and not isinstance(v, bool)]
    flags = [k for k, v in c.constexprs.items() if v is True]
    return " ".join(parts + flags + [f"warps={c.num_warps}", f"stages={c.num_stages}"])


def markdown(results: list[tuple[Compiled, list[Launch]]], arch: Arch) -> str:
    """The report for one architecture as a markdown table (one row per compiled variant)."""
    limit = arch.smem_per_block // KB
    lines = [f"| kernel | used by | launch sizes | dtype | variant | regs | spill B | shared KB (limit {limit}) | ok |",
             "| --- | --- | --- | --- | --- | ---: | ---: | ---: | --- |"]
    for c, same in results:
        launch = same[0]
        verdict = "ok" if c.ok else "; ".join(c.problems)
        lines.append(f"| {launch.module}.{launch.name} | {_sources(same)} | {_shapes(same)} | {launch.dtype()} | "
                     f"{_blocks(c)} | {c.regs} | {c.local} | {c.shared / KB:.1f} | {verdict} |")
    return "\n".join(lines)


def table(results: list[tuple[Compiled, list[Launch]]], arch: Arch) -> str:
    """The report for a terminal: fixed-width columns, then one line per problem."""
    head = f"{'kernel':34s} {'dtype':9s} {'regs':>4s} {'spill B':>7s} {'shared KB':>9s}  {'ok':4s} used by"
    lines = [f"{arch.name} ({arch.gpus}): {arch.regs_per_thread} registers per thread, "
             f"{arch.smem_per_block // KB} KB shared memory per block ({arch.smem_per_sm // KB} KB per SM)", head,
             "-" * len(head)]
    for c, same in results:
        launch = same[0]
        lines.append(f"{launch.module + '.' + launch.name:34s} {launch.dtype():9s} {c.regs:4d} {c.local:7d} "
                     f"{c.shared / KB:9.1f}  {'ok' if c.ok else 'FAIL':4s} {_sources(same)}")
        for p in c.problems:
            lines.append(f"    {p} ({_blocks(c)}; {_shapes(same)})")
    bad = sum(1 for c, _ in results if not c.ok)
    lines.append(f"{len(results) - bad}/{len(results)} kernel variants compile for {arch.name} within its limits"
                 + (f"; {bad} do not" if bad else ""))
    return "\n".join(lines)
