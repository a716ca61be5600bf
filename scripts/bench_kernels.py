"""Run the kernel benchmark and write benchmarks/results/kernels.md.

    python scripts/bench_kernels.py [--out benchmarks/results/kernels.md] [--machine "CPU, 2 cores"]
                                    [--date 2026-11-21] [-- extra `python -m kernels.bench` arguments]

On a CUDA machine: preset shapes, do_bench timings, torch.compile column, and a list of which kernels beat
PyTorch eager and torch.compile. Without CUDA: every kernel at its normal and awkward interpreter shapes,
a correctness table labelled as interpreter timings (not GPU timings).
"""
from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from kernels import _table  # noqa: E402


def run_bench(extra: list[str]) -> list[dict]:
    cmd = [sys.executable, "-m", "kernels.bench", "--json", "--all-shapes", *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if proc.returncode not in (0, 1):
        raise SystemExit(f"bench failed ({proc.returncode}):\n{proc.stderr}")
    return [e for e in map(json.loads, proc.stdout.splitlines()) if e.get("type") == "kernel"]


def markdown(events: list[dict], machine: str, date: str) -> str:
    gpu = bool(events) and events[0].get("timing") == "cuda"
    compile_ = any("compile_ms" in e for e in events)
    out = ["# Kernels: PyTorch vs fused Triton", "", f"Machine: {machine}. Date: {date}.", ""]
    if gpu:
        out += [f"Device: {events[0].get('device')}. Timing: `triton.testing.do_bench` (CUDA events, median). "
                f"Peak memory: `torch.cuda.max_memory_allocated` above the baseline, forward + backward.", ""]
    else:
        out += ["**Correctness on CPU through Triton's interpreter (TRITON_INTERPRET=1). The millisecond columns "
                "are interpreter timings, not GPU timings**: the interpreter runs every program instance as numpy "
                "code, so Triton is always far slower than PyTorch here (speedup: n/a) and even the PyTorch "
                "column is noisy on a shared 2-core machine. Peak memory: torch profiler CPU allocation events "
                "(forward + backward), which is what the kernels' tensors would occupy on a device.", "",
                "Errors are against the reference evaluated in float32 on the same inputs: max abs err and "
                "relative RMS error ||out - ref|| / ||ref||, worst over outputs and input gradients. "
                "Tolerances: fp32 rel RMS 1e-5 (max 1e-4 of max|ref|), bf16 rel RMS 2e-2 (max 5e-2).", ""]
    head = ["kernel", "shape", "dims", "dtype", "ok", "max abs err", "rel RMS err", "torch fwd ms",
            "torch f+b ms", "triton fwd ms", "triton f+b ms"]
    if compile_:
        head.append("compile f+b ms")
    head += ["torch peak", "triton peak", "speedup"]
    out += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for e in events:
        cells = [e["name"], _table.fmt_shape(e.get("shape")), e.get("dims", ""), e.get("dtype", ""),
                 "ok" if e.get("ok") else "**FAIL**", _table.fmt_err(_table.worst(e, "max_abs_err")),
                 _table.fmt_err(_table.worst(e, "rel_rms_err")), _table.fmt_ms(e.get("torch_fwd_ms")),
                 _table.fmt_ms(e.get("torch_ms")), _table.fmt_ms(e.get("triton_fwd_ms")),
                 _table.fmt_ms(e.get("triton_ms"))]
        if compile_:
            cells.append(_table.fmt_ms(e.get("compile_ms")))
        cells += [_table.fmt_bytes(e.get("torch_mem")), _table.fmt_bytes(e.get("triton_mem")), _table.fmt_speedup(e)]
        out.append("| " + " | ".join(cells) + " |")
    out += ["", _table.summary(events), ""]
    if gpu:
        beat = [e for e in events if (_table.speedup(e) or 0) > 1]
        out.append("Beat PyTorch eager (forward + backward): "
                   + (", ".join(f"{e['name']} {e['dtype']}" for e in beat) or "none") + ".")
        if compile_:
            beat_c = [e for e in events if e.get("compile_ms") and e.get("triton_ms")
                      and e["triton_ms"] < e["compile_ms"]]
            out.append("Beat torch.compile: " + (", ".join(f"{e['name']} {e['dtype']}" for e in beat_c) or "none")
                       + ".")
        lose = [e for e in events if (_table.speedup(e) or 0) <= 1]
        out.append("Slower than eager: " + (", ".join(f"{e['name']} {e['dtype']}" for e in lose) or "none") + ".")
    else:
        lower = {}
        for e in events:
            if e.get("torch_mem") and e.get("triton_mem"):
                lower.setdefault(e["name"], []).append(e["triton_mem"] < e["torch_mem"])
        out.append("Peak memory (forward + backward) below PyTorch's in every row: "
                   + (", ".join(n for n, v in lower.items() if all(v)) or "none") + "; in some rows only: "
                   + (", ".join(n for n, v in lower.items() if any(v) and not all(v)) or "none") + "; never: "
                   + (", ".join(n for n, v in lower.items() if not any(v)) or "none") + ".")
        big = [e for e in events if e["name"] == "fused_linear_ce" and e.get("shape") == [512, 32, 8192]]
        for e in big:
            out.append(f"Fused linear + cross-entropy, 512 tokens x 8192 vocab ({e['dtype']}): peak "
                       f"{_table.fmt_bytes(e['torch_mem'])} for PyTorch (logits, log-probabilities and their "
                       f"gradient) vs {_table.fmt_bytes(e['triton_mem'])} fused (one chunk of logits + dW); the "
                       f"full logits alone are {_table.fmt_bytes(512 * 8192 * 4)} in fp32.")
        out += ["", "## GPU (H100) table", "",
                "Not measured: no GPU was lent to this session. On a CUDA machine run "
                "`python scripts/bench_kernels.py --machine \"H100 80GB\"` (preset shapes: GPT-2 8x1024 tokens, "
                "768 wide, 50257 vocab; Mamba-130M d_inner 1536; RWKV/RetNet 12 heads at T=1024) to fill it in, "
                "with the torch.compile column and the lists of kernels that beat eager and compile."]
    return "\n".join(out) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "kernels.md"))
    p.add_argument("--machine", default="CPU, 2 cores")
    p.add_argument("--date", default=datetime.date.today().isoformat())
    p.add_argument("extra", nargs="*", help="arguments for python -m kernels.bench (after --)")
    args = p.parse_args(argv)
    events = run_bench(args.extra)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(markdown(events, args.machine, args.date), encoding="utf-8")
    print(f"wrote {args.out}: {_table.summary(events)}")
    return 0 if all(e.get("ok") for e in events) else 1


if __name__ == "__main__":
    sys.exit(main())
