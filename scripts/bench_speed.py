"""Training throughput of every sequence preset, measured side by side in one invocation.

    python scripts/bench_speed.py [--presets nanogpt,mingpt,...] [--steps 40] [--warmup 8]
                                  [--profile cpu|full] [--nproc N] [--out benchmarks/results/speed.md]

Each preset runs as `python -m trainers PRESET profile=... train.max_steps=STEPS` (exactly the trainer
`cockpit train` starts, with the preset's own model and batch) with eval, samples, memory probes and
checkpoints pushed past the end, one step event per step. Throughput is the steady state: tokens between the
step events of step WARMUP and the last step over the time between them (start-up, the first step's memory
probe and the final eval are outside the window). On CUDA the table adds bf16 model FLOPs utilisation
(nanoGPT's estimate: 6N + 12·L·C·T FLOPs per token for attention models, 6N otherwise) against the
device's dense bf16 peak. `--nproc N` runs each preset under torchrun (DDP) instead.

The table replaces this script's section of --out (between its markers); the other speed scripts
(bench_overhead.py, bench_replay.py) keep theirs.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SEQUENCE_PRESETS = ("nanogpt", "mingpt", "bitnet", "mamba", "rwkv", "retnet", "moe", "gpt2-124m")
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "speed.md"
ATTENTION_ARCHS = ("gpt", "mingpt", "bitnet", "moe")  # the 12·L·C·T attention term applies
# dense bf16 tensor-core peaks (no 2:4 sparsity), by substring of torch.cuda.get_device_name()
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "4090": 165e12, "3090": 71e12,
             "A10": 125e12}
QUIET = ["train.eval_interval={big}", "train.sample_interval=0", "train.memory_interval=0",
         "train.checkpoint_interval=0", "train.log_interval=1", "train.eval_iters=1", "train.sample_tokens=1",
         "train.system_interval=3600"]


def write_section(path: str | Path, key: str, body: str, title: str = "# Speed and scale") -> Path:
    """Replace (or append) the block between `<!-- key:start -->` and `<!-- key:end -->` in a markdown file,
    so each benchmark script owns its section of a shared results file."""
    path = Path(path)
    start, end = f"<!-- {key}:start -->", f"<!-- {key}:end -->"
    block = f"{start}\n{body.rstrip()}\n{end}\n"
    text = path.read_text(encoding="utf-8") if path.exists() else f"{title}\n\n"
    if start in text and end in text:
        head, rest = text.split(start, 1)
        tail = rest.split(end, 1)[1].lstrip("\n")
        text = head + block + ("\n" + tail if tail else "")    # one blank line before what follows
    else:
        text = text.rstrip("\n") + "\n\n" + block
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def machine_line() -> str:
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    omp = ", ".join(f"{k}={os.environ[k]}" for k in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY") if k in os.environ)
    return (f"{time.strftime('%Y-%m-%d %H:%M')}, {platform.machine()} CPU, {os.cpu_count()} cores "
            f"(load average {load} at the start), torch {_torch_version()}{', ' + omp if omp else ''}")


def _torch_version() -> str:
    try:
        from importlib.metadata import version
        return version("torch")
    except Exception:  # noqa: BLE001
        return "?"


def steady_throughput(events: list[dict], warmup: int) -> dict:
    """Tokens/s between the step event of step `warmup` (or the first) and the last step event."""
    steps = [e for e in events if e["type"] == "step"]
    if len(steps) < 2:
        raise RuntimeError("fewer than two step events: nothing to time")
    first = next((e for e in steps if e["step"] >= warmup), steps[0])
    if first is steps[-1]:
        first = steps[0]
    last = steps[-1]
    unit = "tokens" if "tokens" in last else "items"
    dt = last["time"] - first["time"]
    n = last[unit] - first[unit]
    return {"throughput": n / dt, "step_ms": 1000.0 * dt / (last["step"] - first["step"]), "unit": unit,
            "window_steps": last["step"] - first["step"]}


def flops_per_token(cfg: dict, n_params: int) -> float:
    m = cfg.get("model", {})
    f = 6.0 * n_params
    if cfg.get("arch") in ATTENTION_ARCHS and all(k in m for k in ("n_layer", "n_embd", "block_size")):
        f += 12.0 * m["n_layer"] * m["n_embd"] * m["block_size"]
    return f


def run_preset(name: str, a, out_dir: Path) -> dict:
    log = out_dir / name / "events.jsonl"
    over = [f"profile={a.profile}", f"train.max_steps={a.steps}",
            *[q.format(big=a.steps + 1) for q in QUIET], *a.set]
    trainer = ["-m", "trainers", name, *over, "--log", str(log)]
    if a.nproc > 1:
        argv = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={a.nproc}", "--standalone",
                "-m", "--", "trainers", *trainer[2:]]
    else:
        argv = [sys.executable, *trainer]
    t0 = time.time()
    r = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=a.timeout)
    wall = time.time() - t0
    if r.returncode != 0:
        tail = (r.stderr or r.stdout).strip().splitlines()[-1:] or ["?"]
        return {"preset": name, "error": f"exit {r.returncode}: {tail[0][:200]}"}
    events = [json.loads(x) for x in log.read_text().splitlines() if x.strip()]
    start = next(e for e in events if e["type"] == "run_start")
    res = {"preset": name, "arch": start["arch"], "n_params": start["n_params"], "device": start["device"],
           "amp_dtype": start.get("amp_dtype"), "batch": start["config"]["train"]["batch_size"],
           "block": start["config"]["model"].get("block_size"), "wall": wall,
           **steady_throughput(events, a.warmup)}
    if start["device"].startswith("cuda"):
        peak = a.peak_tflops * 1e12 if a.peak_tflops else next(
            (v for k, v in PEAK_BF16.items() if k in a.device_name), None)
        if peak:
            fpt = flops_per_token(start["config"], start["n_params"])
            res["mfu"] = res["throughput"] * fpt / (peak * a.nproc)
    return res


def table(results: list[dict]) -> str:
    has_mfu = any("mfu" in r for r in results)
    cols = ["preset", "arch", "params", "batch x block", "device", "tokens/s", "ms/step"]
    cols += ["bf16 MFU"] if has_mfu else []
    lines = ["| " + " | ".join(cols) + " |", "|" + " --- |" * len(cols)]
    for r in results:
        if "error" in r or "skipped" in r:
            cells = [r["preset"], r.get("skipped") or "failed: " + r["error"]] + [""] * (len(cols) - 2)
        else:
            cells = [r["preset"], r["arch"], f"{r['n_params'] / 1e6:.2f}M", f"{r['batch']} x {r['block']}",
                     f"{r['device']} ({r['amp_dtype']})", f"{r['throughput']:,.0f}", f"{r['step_ms']:.1f}"]
            if has_mfu:
                cells.append(f"{100 * r['mfu']:.1f}%" if "mfu" in r else "")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--presets", default=",".join(SEQUENCE_PRESETS), help="comma-separated preset names")
    ap.add_argument("--steps", type=int, default=40, help="training steps per preset")
    ap.add_argument("--warmup", type=int, default=8, help="steps left out of the timing window")
    ap.add_argument("--profile", choices=("cpu", "full", "auto"), default="cpu")
    ap.add_argument("--nproc", type=int, default=1, help="run each preset under torchrun with N ranks")
    ap.add_argument("--set", action="append", default=[], metavar="K=V", help="extra override for every preset")
    ap.add_argument("--peak-tflops", type=float, default=0.0, help="device bf16 peak for MFU (default: by name)")
    ap.add_argument("--timeout", type=float, default=1800)
    ap.add_argument("--out", default=str(DEFAULT_OUT))
    ap.add_argument("--json", action="store_true", help="print one JSON line per preset")
    a = ap.parse_args(argv)
    if a.warmup >= a.steps:
        ap.error(f"--warmup {a.warmup} must be below --steps {a.steps}")
    a.device_name = _cuda_name()
    header = machine_line()
    out_dir = ROOT / "runs" / f"bench-speed-{time.strftime('%Y%m%d-%H%M%S')}"
    results = []
    for name in [p.strip() for p in a.presets.split(",") if p.strip()]:
        if not (ROOT / "presets" / f"{name}.yaml").is_file():
            res = {"preset": name, "skipped": "skipped: no such preset in presets/"}
        else:
            res = run_preset(name, a, out_dir)
        results.append(res)
        print(json.dumps(res) if a.json else _line(res), flush=True)
    body = (f"## Training throughput of the sequence presets ({a.profile} profile"
            f"{f', {a.nproc} DDP ranks' if a.nproc > 1 else ''})\n\n"
            f"Measured by `python scripts/bench_speed.py --profile {a.profile} --steps {a.steps} --warmup "
            f"{a.warmup}{''.join(' --set ' + x for x in a.set)}{f' --nproc {a.nproc}' if a.nproc > 1 else ''}` "
            f"on {header}{(', GPU ' + a.device_name) if a.device_name else ''}. Steady-state "
            f"tokens/s of steps {a.warmup}..{a.steps} (no eval, samples, probes or checkpoints in the window); "
            f"the presets ran one after another.\n\n" + table(results) + "\n")
    if any("mfu" in r for r in results):
        body += ("\nMFU = tokens/s x (6N + 12·L·C·T) / dense bf16 peak (nanoGPT's estimate_mfu). Published "
                 "anchors for GPT-2 124M, derived from their reported wall times: llm.c, 10B tokens in ~90 min "
                 "on 8xA100 80GB, ~230k tokens/s per A100 (~60% MFU); nanoGPT, ~300B tokens in ~4 days on "
                 "8xA100 40GB, ~107k tokens/s per A100 (~30% MFU).\n")
    write_section(a.out, f"bench_speed-{a.profile}" + (f"-ddp{a.nproc}" if a.nproc > 1 else ""), body)
    print(f"wrote {a.out}; logs in {out_dir}")
    return 0 if not any("error" in r for r in results) else 1


def _cuda_name() -> str:
    try:
        import torch
        return torch.cuda.get_device_name(0) if torch.cuda.is_available() else ""
    except Exception:  # noqa: BLE001
        return ""


def _line(r: dict) -> str:
    if "skipped" in r or "error" in r:
        return f"{r['preset']:>10}: {r.get('skipped') or r['error']}"
    return (f"{r['preset']:>10}: {r['throughput']:>10,.0f} {r['unit']}/s  {r['step_ms']:7.1f} ms/step  "
            f"{r['n_params'] / 1e6:.2f}M params  ({r['wall']:.0f} s wall)")


if __name__ == "__main__":
    sys.exit(main())
