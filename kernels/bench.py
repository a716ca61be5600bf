"""`python -m kernels.bench`: every fused Triton kernel against its PyTorch reference.

    python -m kernels.bench [--json] [--only NAME[,NAME]] [--dtype float32,bfloat16] [--all-shapes]
                            [--device auto|cpu|cuda] [--reps N] [--compile | --no-compile] [--list]

On a CUDA machine: preset shapes (GPT-2: 8x1024 tokens, 768 wide, 50257 vocab; Mamba-130M ...), timings
by triton.testing.do_bench (CUDA events), and torch.compile of the same PyTorch code as a third column.
Without CUDA (or with TRITON_INTERPRET=1): the kernels run through Triton's CPU interpreter at small shapes;
correctness is real, timings are interpreter timings, not GPU timings. One row (or with --json one `kernel`
event, docs/events.md) per kernel, shape and dtype, streamed as each finishes. Exit status: 0 all correct,
1 a kernel failed its check, 2 bad arguments.
"""
from __future__ import annotations

import argparse
import sys
import time

from common.cli import BadInput, Parser, fail
from common.events import encode
from kernels import NAMES, TARGETS, _table, use_interpreter


def build_parser(prog: str = "python -m kernels.bench") -> Parser:
    p = Parser(prog=prog, description="Fused Triton kernels vs PyTorch: correctness, time, peak memory.")
    add_arguments(p)
    return p


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The benchmark's options, shared with `cockpit kernels` (which forwards them to this module)."""
    p.add_argument("--json", action="store_true", help="emit `kernel` events as JSON lines")
    p.add_argument("--only", default="", metavar="NAME[,NAME]", help=f"comma-separated kernels ({', '.join(NAMES)})")
    p.add_argument("--dtype", default="float32,bfloat16", help="comma-separated: float32, bfloat16")
    p.add_argument("--all-shapes", action="store_true",
                   help="on CPU also run the awkward (odd-sized) shape of every kernel")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                   help="auto (the default: cuda when visible), cpu (through Triton's interpreter) or cuda")
    p.add_argument("--reps", type=int, default=0,
                   help="least timed runs on CPU (default 1, more while under 0.2 s; CUDA: do_bench)")
    p.add_argument("--compile", dest="compile", nargs="?", const=True, default=None, metavar="ARCH",
                   help="also time torch.compile of the PyTorch code (default on CUDA); with an architecture "
                        f"({', '.join(TARGETS)}): instead compile every kernel for it, without a GPU, at each "
                        "preset's full-size shapes and report registers, spills and shared memory")
    p.add_argument("--no-compile", dest="compile", action="store_false",
                   help="do not time torch.compile (the default on CPU)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random inputs (default 0)")
    p.add_argument("--list", action="store_true", help="list the kernels and what they compute")


def parse_names(only: str) -> list[str]:
    names = [n.strip() for n in only.split(",") if n.strip()] if only else list(NAMES)
    bad = [n for n in names if n not in NAMES]
    if bad:
        raise BadInput(f"--only: unknown kernel '{bad[0]}'; choose from {', '.join(NAMES)}")
    return names


def parse_dtypes(spec: str) -> list[str]:
    dtypes = [d.strip() for d in spec.split(",") if d.strip()]
    bad = [d for d in dtypes if d not in ("float32", "bfloat16")]
    if bad or not dtypes:
        raise BadInput(f"--dtype: '{bad[0] if bad else spec}' is not supported; use float32, bfloat16 or both")
    return dtypes


def event(type_: str, **fields) -> str:
    """One event line of the protocol (common/events.py), without its newline."""
    return encode(type_, fields, time.time()).decode()[:-1]


def parse_arch(arch: str) -> str:
    """`--compile ARCH`: one of TARGETS."""
    if arch not in TARGETS:
        raise BadInput(f"--compile: unknown architecture '{arch}'; choose from {', '.join(TARGETS)}")
    return arch


def pick_device(choice: str):
    """`--device auto|cpu|cuda` as a torch.device: auto takes CUDA where a device is visible."""
    import torch

    if choice == "cuda" and not torch.cuda.is_available():
        raise BadInput("--device cuda: no CUDA device is visible; use --device auto or cpu")
    return torch.device("cuda" if choice != "cpu" and torch.cuda.is_available() else "cpu")


def run(args, out=None) -> int:
    out = out or sys.stdout
    if isinstance(args.compile, str):  # compiling for a GPU is the trainer layer's job (it builds the presets)
        raise BadInput(f"--compile {args.compile}: use `cockpit kernels --compile ARCH` or "
                       "`python -m trainers.gpu_compile ARCH`")
    names, dtypes = parse_names(args.only), parse_dtypes(args.dtype)
    device = pick_device(args.device)
    if device.type == "cpu":
        use_interpreter()  # before the kernel modules are imported (and their @triton.jit run)
    from kernels import _harness

    if args.list:
        for name in names:
            k = _harness.get(name)
            print(f"{name:15s} {k.title}  [{k.dims}]", file=out)
        return 0
    on_gpu = _harness.gpu_timed(device)  # compiled kernels on CUDA; False in the interpreter, even on CUDA
    compile_ = on_gpu if args.compile is None else args.compile
    reps = args.reps or 1
    events, first = [], True
    for name in names:
        kernel = _harness.get(name)
        shapes = kernel.shapes["gpu" if on_gpu else "cpu"]
        if not on_gpu and not args.all_shapes:
            shapes = shapes[:1]
        for shape in shapes:
            for dt in dtypes:
                ev = _harness.run_case(kernel, shape, _harness.DTYPES[dt], device, reps=reps, seed=args.seed,
                                       compile=compile_)
                events.append(ev)
                if args.json:
                    if first:
                        print(event("log", level="info", message="kernels: " + _table.banner(ev)), file=out)
                    print(event("kernel", **ev), file=out, flush=True)
                else:
                    if first:
                        print(_table.banner(ev), file=out)
                        print(_table.header(compile_), file=out)
                    print(_table.row(ev, compile_), file=out, flush=True)
                first = False
    if args.json:
        print(event("log", level="info", message="kernels: " + _table.summary(events)), file=out, flush=True)
    else:
        print(_table.summary(events), file=out, flush=True)
    return 0 if all(e.get("ok") for e in events) else 1


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        return run(args)
    except BadInput as e:
        return fail(str(e))


if __name__ == "__main__":
    sys.exit(main())
