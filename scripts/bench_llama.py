"""The llama preset against nanogpt on their CPU profiles, and the estimated memory of QLoRA fine-tunes of
1B-8B Llama bases.

    python scripts/bench_llama.py [--seeds 1337 ...] [--target 1.89] [--out FILE]

Both presets train here, one after the other, with their CPU profiles as they ship (the same 4 layers of width
128 over 64 characters of the embedded Shakespeare, the same schedule: batch 32, lr 5e-3 -> 5e-4 over 800
steps), through `python -m trainers PRESET profile=cpu`, exactly what `cockpit train PRESET --headless` runs
on a CPU. Times are from launching each process to the event in question. The memory table is
`python -m trainers.inspect qlora lora`'s (trainers/inspect.py finetune_estimates): built on the meta device,
an estimate.
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
PRESETS = ("nanogpt", "llama")


def run(preset: str, seed: int, log: Path) -> dict:
    """Train `preset` on its CPU profile: evals as (step, val_loss, seconds since launch), steps/s, params."""
    t0 = time.time()
    subprocess.run([sys.executable, "-m", "trainers", preset, "profile=cpu", f"train.seed={seed}",
                    "--log", str(log)], cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    wall = time.time() - t0
    events = [json.loads(x) for x in log.read_text().splitlines() if x.strip()]
    evals = [(e["step"], e["val_loss"], e["time"] - t0) for e in events if e["type"] == "eval"]
    steps = [e for e in events if e["type"] == "step"]
    start = next(e for e in events if e["type"] == "run_start")
    rate = (steps[-1]["step"] - steps[0]["step"]) / max(steps[-1]["time"] - steps[0]["time"], 1e-9)
    return {"evals": evals, "best": min(v for _, v, _ in evals), "wall": wall, "steps_per_s": rate,
            "params": start["n_params"]}


def time_to(evals, target):
    return next(((step, t) for step, v, t in evals if v <= target), None)


def memory_table() -> list[str]:
    out = subprocess.run([sys.executable, "-m", "trainers.inspect", "--json", "qlora", "lora"], cwd=ROOT,
                         check=True, capture_output=True, text=True).stdout
    infos = json.loads(out.strip().splitlines()[-1])
    lines = ["| base shape | parameters | QLoRA (qlora preset) | LoRA (lora preset) |", "| --- | --- | --- | --- |"]
    rows = {(i["name"], r["shape"]): r for i in infos for r in i.get("finetune_estimates", [])}
    shapes = [r["shape"] for r in next(i for i in infos if i["name"] == "qlora")["finetune_estimates"]]
    for shape in shapes:
        q, lo = rows[("qlora", shape)], rows[("lora", shape)]

        def cell(r):
            gib = r["est_bytes"] / 2**30
            return f"{gib:.1f} GiB{'' if r['est_bytes'] <= 12 * 2**30 else ' (over 12 GB)'}"
        lines.append(f"| {shape} | {q['n_params'] / 1e9:.2f}B | {cell(q)} | {cell(lo)} |")
    q = rows[("qlora", shapes[0])]
    setting = (f"micro-batch {q['micro_batch']} x {q['seq']} tokens"
               f"{', activation checkpointing' if q['activation_checkpointing'] else ''}")
    return lines + ["", f"Both presets' defaults ({setting}, rank 8 on every projection). Each figure is the "
                        "frozen base (float32, its linear layers NF4 in QLoRA) + float32 adapters, their gradients "
                        "and AdamW moments + the bf16 activations of one micro-batch with flash attention."]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[1337])
    ap.add_argument("--target", type=float, default=1.89)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "llama.md"))
    a = ap.parse_args()
    out_dir = ROOT / "runs" / f"bench-llama-{time.strftime('%Y%m%d-%H%M%S')}"
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    lines = [f"## Llama from scratch vs nanoGPT, and QLoRA memory ({time.strftime('%Y-%m-%d')}, CPU "
             f"{os.cpu_count()} cores, {platform.processor() or platform.machine()}, torch "
             f"{__import__('torch').__version__}, load average {load:.1f} at start)", "",
             f"`python scripts/bench_llama.py --seeds {' '.join(map(str, a.seeds))}`: the nanogpt and llama presets "
             "on their CPU profiles (4 layers, width 128, 64 characters of the embedded Shakespeare, batch 32, "
             "800 steps), one after the other.", "",
             f"| preset | seed | parameters | best val loss | time to {a.target} | steps/s | run wall |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    results = {}
    for seed in a.seeds:
        for preset in PRESETS:
            r = run(preset, seed, out_dir / f"{preset}-{seed}" / "events.jsonl")
            results[(preset, seed)] = r
            hit = time_to(r["evals"], a.target)
            params = f"{r['params'] / 1e6:.2f}M" if r["params"] else "?"
            lines.append(f"| {preset} | {seed} | {params} | {r['best']:.4f} | "
                         f"{f'{hit[1]:.0f} s (step {hit[0]})' if hit else 'not reached'} | "
                         f"{r['steps_per_s']:.1f} | {r['wall']:.0f} s |")
            print(lines[-1], flush=True)
    end_load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    lines += ["", f"Load average {end_load:.1f} at the end (the cores are shared: steps/s and times are only as "
                  "steady as the load).", "", "Validation loss at each eval (first seed):", "",
              "| step | " + " | ".join(PRESETS) + " |", "| --- | " + " | ".join("---" for _ in PRESETS) + " |"]
    by_step = {p: {s: v for s, v, _ in results[(p, a.seeds[0])]["evals"]} for p in PRESETS}
    for step in sorted(by_step[PRESETS[0]]):
        lines.append(f"| {step} | " + " | ".join(f"{by_step[p].get(step, float('nan')):.4f}" for p in PRESETS) + " |")
    lines += ["", "### Estimated memory of fine-tuning Llama bases (12 GB budget)", "", *memory_table(), ""]
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text("\n".join(lines) + "\n")
    print(f"logs in {out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
