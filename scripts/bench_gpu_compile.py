"""The kernels compiled for CUDA targets on a machine without a GPU: registers, spills and shared memory per
kernel variant and shape, against each architecture's limits (`cockpit kernels --compile ARCH`, all presets).

    python scripts/bench_gpu_compile.py [--archs sm_89,sm_90] [--out benchmarks/results/gpu_compile.md]

Each architecture is compiled by `python -m trainers.gpu_compile ARCH --markdown FILE` in a process of its own
(Triton's interpreter off); the tables are gathered into one results file for BENCHMARKS.md
(scripts/build_benchmarks.py).
"""
from __future__ import annotations

import argparse
import datetime
import os
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def compile_report(arch: str, tmp: Path) -> tuple[int, str, str]:
    """(exit status, markdown table, the command's last summary lines) for one architecture."""
    md = tmp / f"{arch}.md"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-m", "trainers.gpu_compile", arch, "--markdown", str(md)], cwd=ROOT,
                          env=env, capture_output=True, text=True)
    if not md.is_file():
        raise SystemExit(f"trainers.gpu_compile {arch} wrote no report (exit {proc.returncode}):\n"
                         f"{proc.stderr[-3000:]}")
    summary = [line for line in proc.stdout.splitlines() if "kernel variants compile" in line or "launches" in line]
    return proc.returncode, md.read_text().strip(), "\n".join(summary)


def render(results: dict[str, tuple[int, str, str]]) -> str:
    import torch
    import triton

    from kernels.targets import ARCHS

    date = datetime.date.today().isoformat()
    out = [f"# Kernels compiled for GPU targets, without a GPU ({date})", "",
           "`cockpit kernels --compile ARCH` (here `python scripts/bench_gpu_compile.py`): every fused kernel "
           "compiled by `triton.compile(ASTSource(...), target=GPUTarget(\"cuda\", CC, 32))` on the CPU machine "
           f"(triton {triton.__version__}, torch {torch.__version__}, its bundled ptxas), at the launches one "
           "training step of each preset's full-size model makes with kernels=triton (forward and backward, "
           "fp32 and bf16 weights and activations, recorded on the meta device) and at each kernel's "
           "registered GPU benchmark shape. Registers per thread, local memory per thread (spills) and shared "
           "memory per block are read from the cubin (cuobjdump --dump-resource-usage); a row fails when it "
           "spills, exceeds the shared memory one block may have, or the registers of a block. One row per "
           "distinct compiled variant; `launch sizes` are its integer arguments (rows, widths, lengths), up to "
           "three shapes shown.", ""]
    for arch, (rc, table, summary) in results.items():
        a = ARCHS[arch]
        out += [f"## {arch}: {a.gpus}", "",
                f"Limits: {a.regs_per_thread} registers per thread, {a.regs_per_block // 1024}K per block, "
                f"{a.smem_per_block // 1024} KB shared memory per block ({a.smem_per_sm // 1024} KB per SM). "
                f"Exit status {rc}.", "", "```", summary, "```", "", table, ""]
    return "\n".join(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--archs", default="sm_89,sm_90")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "gpu_compile.md"))
    args = p.parse_args(argv)
    archs = [a for a in args.archs.split(",") if a]
    with tempfile.TemporaryDirectory() as tmp, ThreadPoolExecutor(len(archs)) as pool:  # one process per arch
        results = dict(zip(archs, pool.map(lambda a: compile_report(a, Path(tmp)), archs)))
    Path(args.out).write_text(render(results))
    print(f"{args.out}: " + "; ".join(f"{a} exit {rc}" for a, (rc, _, _) in results.items()))
    return max(rc for rc, _, _ in results.values())


if __name__ == "__main__":
    sys.exit(main())
