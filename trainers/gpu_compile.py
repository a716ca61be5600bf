"""`python -m trainers.gpu_compile ARCH`: every fused kernel compiled for a CUDA architecture, without a GPU,
at the shapes each preset's full-size model launches it with (forward and backward), and at each kernel's
registered GPU benchmark shape; registers, spills and shared memory against the architecture's limits.

    python -m trainers.gpu_compile sm_89 [--presets NAME,...] [--only KERNEL,...] [--no-bench] [--markdown FILE]

How the launches are found (kernels/targets.py): each preset's full profile, with kernels=triton, builds its
model on the meta device and runs one training step's forward and backward there, with the fused ops
switched on for meta tensors and Triton's launcher replaced by a recorder. It runs twice, with fp32 and with
bf16 weights and activations: the dtypes a float32 run and a bf16-autocast GPU run hand the kernels (under
autocast some kernels see fp32, e.g. the norms of the fp32 residual stream, and some bf16; both variants of
each are compiled). The fine-tuning presets (lora, qlora) train the gpt2-124m shape with the same kernels,
and the diffusion ones (dit, unet) use none.

`cockpit kernels --compile ARCH` runs this in a process of its own: Triton's interpreter must be off when the
kernel files are imported. Exit status: 0 when every variant compiles within the limits, 1 otherwise, 2 on
bad arguments.
"""
from __future__ import annotations

import sys
import time

from common.cli import BadInput, Parser, fail
from kernels import MODULES, NAMES, TARGETS

SKIPPED = {"lora": "fine-tunes the gpt2-124m shape with its kernels", "qlora": "fine-tunes the gpt2-124m shape",
           "dit": "uses no fused kernel", "unet": "uses no fused kernel"}


def kernel_presets() -> list[str]:
    """The presets whose model takes `kernels` (and so launches fused kernels with kernels=triton)."""
    import dataclasses

    from trainers import config
    from trainers.models import arch_module

    out = []
    for name in config.preset_names():
        if name in SKIPPED:
            continue
        arch = config.load(name, profile="full", has_cuda=True)["arch"]
        if "kernels" in {f.name for f in dataclasses.fields(arch_module(arch).Config)}:
            out.append(name)
    return out


def preset_launches(preset: str):
    """The kernel launches of one training step of `preset`'s full-size model, fp32 and bf16 (see above)."""
    import torch

    from kernels.targets import recording
    from trainers import config
    from trainers.tasks import load_task

    cfg = config.load(preset, ["kernels=triton"], profile="full", has_cuda=True)
    cfg["device"] = "cpu"
    task = load_task(cfg, torch.device("cpu"))
    batch = tuple(t.to("meta") for t in task.get_batch("train", 0))
    out = []
    for dtype in (torch.float32, torch.bfloat16):
        with torch.device("meta"):
            model = task.build_model()
        model.to(dtype).train()
        with recording() as launches:
            task.loss(model, batch).backward()
        for launch in launches:
            launch.source = preset
        out += launches
    return out


def build_parser() -> Parser:
    p = Parser(prog="python -m trainers.gpu_compile",
               description="Compile every fused kernel for a CUDA architecture without a GPU; report registers, "
                           "spills and shared memory against its limits.")
    p.add_argument("arch", help=f"the architecture: {', '.join(TARGETS)}")
    p.add_argument("--presets", default="", metavar="NAME[,NAME]", help="only these presets (default: all that "
                   "use kernels)")
    p.add_argument("--only", default="", metavar="KERNEL[,KERNEL]", help=f"only these kernels ({', '.join(NAMES)})")
    p.add_argument("--no-bench", action="store_true", help="leave out the kernels' registered benchmark shapes")
    p.add_argument("--markdown", default="", metavar="FILE", help="also write the report as a markdown table")
    return p


def run(args, out=None) -> int:
    out = out or sys.stdout
    if args.arch not in TARGETS:
        raise BadInput(f"architecture '{args.arch}' is not one of {', '.join(TARGETS)}")
    from kernels.bench import parse_names

    kernels = parse_names(args.only)
    modules = {f"kernels.{MODULES[n]}" for n in kernels}
    presets = [s.strip() for s in args.presets.split(",") if s.strip()] if args.presets else kernel_presets()
    from kernels import interpreting
    if interpreting():
        raise BadInput("TRITON_INTERPRET=1 is set: kernels cannot be compiled for a GPU through the interpreter; "
                       "unset it (cockpit kernels --compile does)")
    from kernels.targets import ARCHS, bench_launches, compile_all, markdown, table
    from trainers.config import ConfigError

    arch = ARCHS[args.arch]
    t0 = time.time()
    launches = []
    for name in presets:
        try:
            launches += preset_launches(name)
        except ConfigError as e:
            raise BadInput(f"--presets: {e}") from None
    if not args.no_bench:
        launches += bench_launches(kernels)
    launches = [x for x in launches if x.fn.__module__ in modules]

    def progress(i, n, launch):
        print(f"compiling {i + 1}/{n} for {arch.name}: {launch.module}.{launch.name} ({launch.dtype()})",
              file=sys.stderr, flush=True)

    results = compile_all(launches, arch, progress)
    print(table(results, arch), file=out)
    print(f"({len(launches)} launches from {', '.join(presets) or 'no preset'}"
          f"{'' if args.no_bench else ' and the benchmark shapes'}; {time.time() - t0:.0f} s)", file=out)
    if args.markdown:
        from pathlib import Path

        Path(args.markdown).write_text(markdown(results, arch) + "\n")
    return 0 if all(c.ok for c, _ in results) else 1


def main(argv: list[str] | None = None) -> int:
    try:
        return run(build_parser().parse_args(argv))
    except BadInput as e:
        return fail(str(e))


if __name__ == "__main__":
    sys.exit(main())
