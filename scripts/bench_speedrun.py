"""Speedrun: time to val loss 1.89 on ../shared/data/tinyshakespeare.txt, and what each trick buys.

    python scripts/bench_speedrun.py [--data PATH] [--mode ttq|ablation|both] [--seeds 1337 1338 1339]
                                     [--jobs N] [--rows I ...] [--out FILE]

ttq:      nanoGPT's CPU configuration (scripts/nanogpt_baseline.py, as scripts/bench_nanogpt.py runs it)
          against the speedrun preset's CPU defaults (`python -m trainers speedrun data.path=...`), one
          after the other at each seed, in the same run, with the load average before each; times are from
          launching each process to its first eval at or under the target. Goal: speedrun <= 0.5x.
ablation: from nanoGPT's recipe (the speedrun model with every switch off, which is nanoGPT's model, and the
          nanogpt preset's CPU training settings) add one change at a time, ending at the speedrun preset's
          CPU defaults; one seed, the steps and seconds to the target and the best val of each. Then one
          change the defaults leave out (a sliding window), said plainly.
The run directories are under runs/bench-speedrun-<time>/; open any two of them in the runs browser to
overlay their curves (README, "Compare runs").
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_nanogpt import DEFAULT_DATA, ROOT, run_baseline, run_cockpit, time_to  # noqa: E402

# nanoGPT's model and the nanogpt preset's CPU recipe, on the speedrun preset (its CPU profile's model size,
# steps and evals): every model switch off, AdamW with weight decay and clipping, cosine schedule
NANOGPT_RECIPE = ["model.rope=false", "model.qk_norm=false", "model.relu2=false", "model.rmsnorm=false",
                  "model.untied_head=false", "model.zero_init=false", "model.value_embeds=0", "model.skips=false",
                  "model.softcap=0", "model.window=0", "train.optimizer=adamw", "train.schedule=cosine",
                  "train.beta1=0.9", "train.beta2=0.99", "train.weight_decay=0.1", "train.grad_clip=1.0"]
# one change at a time, in the order the speedrun's records added them (each row keeps the ones above it);
# the last row is the preset's CPU defaults
CHANGES = [
    ("Muon for the hidden matrices", ["train.optimizer=muon"]),
    ("rotary embeddings", ["model.rope=true"]),
    ("QK-norm", ["model.qk_norm=true"]),
    ("ReLU²", ["model.relu2=true"]),
    ("RMSNorm (and on the embedding)", ["model.rmsnorm=true"]),
    ("untied head", ["model.untied_head=true"]),
    ("zero-init projections and head", ["model.zero_init=true"]),
    ("U-net skips + embedding shortcut", ["model.skips=true"]),
    ("value embeddings (2 tables)", ["model.value_embeds=2"]),
    ("logit soft-cap 15", ["model.softcap=15"]),
    ("warmup-stable-decay schedule", ["train.schedule=wsd"]),
    ("Adam betas 0.8/0.95, no weight decay, no clipping", ["train.beta1=0.8", "train.beta2=0.95",
                                                           "train.weight_decay=0.0", "train.grad_clip=0.0"]),
]
LEFT_OUT = [("sliding window of 32 tokens (block 64)", ["model.window=32"])]


def ablation_rows() -> list[tuple[str, list[str]]]:
    """(label, overrides) of each ablation run: nanoGPT's recipe, then each change added to the row above."""
    rows, acc = [("nanoGPT's model and recipe", list(NANOGPT_RECIPE))], list(NANOGPT_RECIPE)
    for label, change in CHANGES:
        acc = acc + change
        rows.append((f"+ {label}", list(acc)))
    rows += [(f"defaults + {label} (not in the defaults)", change) for label, change in LEFT_OUT]
    return rows


def load_avg() -> float:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")


def hit_text(hit) -> str:
    return f"{hit[1]:.0f} s (step {hit[0]})" if hit else "not reached"


def ttq(a, out_dir: Path) -> list[str]:
    lines = [f"Time to val loss {a.target} (from launching the process), nanoGPT's CPU configuration and the "
             "speedrun preset's CPU defaults one after the other at each seed:", "",
             "| seed | nanoGPT: time to target | best val | load | speedrun: time to target | best val | load | "
             "ratio |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    ratios = []
    for seed in a.seeds:
        load_b = load_avg()
        base = run_baseline(a.data, seed)
        load_s = load_avg()
        ours = run_cockpit([f"data.path={a.data}", f"train.seed={seed}"], out_dir / f"ttq-{seed}" / "events.jsonl",
                           preset="speedrun")
        b_hit, o_hit = time_to(base["evals"], a.target), time_to(ours["evals"], a.target)
        ratio = o_hit[1] / b_hit[1] if b_hit and o_hit else None
        if ratio is not None:
            ratios.append(ratio)
        lines.append(f"| {seed} | {hit_text(b_hit)} | {base['best']:.4f} | {load_b:.1f} | {hit_text(o_hit)} | "
                     f"{ours['best']:.4f} | {load_s:.1f} | {f'{ratio:.2f}x' if ratio else '-'} |")
        print(lines[-1], flush=True)
    if ratios:
        lines += ["", f"speedrun reaches {a.target} in **{statistics.median(ratios):.2f}x** nanoGPT's time (median "
                      f"of {len(ratios)} seeds; each: {', '.join(f'{r:.2f}x' for r in ratios)}).", ""]
    return lines


def ablation(a, out_dir: Path) -> list[str]:
    seed = a.seeds[0]
    lines = [f"Ablation (seed {seed}): each row adds one change to the row above, from nanoGPT's model and "
             "recipe to the speedrun preset's CPU defaults; same steps, data and evals in every row.", "",
             "| run | steps to target | seconds to target | best val | load |", "| --- | --- | --- | --- | --- |"]
    def one(i: int, label: str, overrides: list[str]) -> str:
        load = load_avg()
        r = run_cockpit([f"data.path={a.data}", f"train.seed={seed}", *overrides],
                        out_dir / f"ablation-{i:02d}" / "events.jsonl", preset="speedrun")
        hit = time_to(r["evals"], a.target)
        row = (f"| {label} | {hit[0] if hit else 'not reached'} | {f'{hit[1]:.0f} s' if hit else '-'} | "
               f"{r['best']:.4f} | {load:.1f} |")
        print(row, flush=True)
        return row

    # --jobs N: N rows at a time (steps to target do not depend on it; seconds do, and the load column says so)
    with ThreadPoolExecutor(max_workers=a.jobs) as pool:
        todo = [(i, *row) for i, row in enumerate(ablation_rows()) if a.rows is None or i in a.rows]
        rows = list(pool.map(lambda args: one(*args), todo))
    if a.jobs > 1:
        lines[0] += f" Rows ran {a.jobs} at a time (--jobs {a.jobs}): their seconds are not comparable to the ttq table's."
    return lines + rows + [""]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--mode", choices=("ttq", "ablation", "both"), default="both")
    ap.add_argument("--seeds", type=int, nargs="+", default=[1337, 1338, 1339])
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "speedrun.md"))
    ap.add_argument("--target", type=float, default=1.89)
    ap.add_argument("--jobs", type=int, default=1, help="ablation rows trained at a time")
    ap.add_argument("--rows", type=int, nargs="+", help="only these ablation rows (0: nanoGPT's recipe)")
    a = ap.parse_args()
    if not Path(a.data).is_file():
        print(f"cockpit: error: {a.data}: tinyshakespeare not found; pass --data PATH", file=sys.stderr)
        return 2
    out_dir = ROOT / "runs" / f"bench-speedrun-{time.strftime('%Y%m%d-%H%M%S')}"
    rows = " ".join(map(str, a.rows or []))
    lines = [f"## Speedrun: time to quality and what each trick buys ({time.strftime('%Y-%m-%d %H:%M')}, CPU "
             f"{os.cpu_count()} cores, {platform.processor() or platform.machine()}, torch "
             f"{__import__('torch').__version__}, load average {load_avg():.1f} at start)", "",
             f"`python scripts/bench_speedrun.py --mode {a.mode} --seeds {' '.join(map(str, a.seeds))}"
             f"{f' --jobs {a.jobs}' if a.jobs > 1 else ''}{f' --rows {rows}' if a.rows else ''}`; nanoGPT = "
             "scripts/nanogpt_baseline.py (nanoGPT's loop restated), run here in the same benchmark. The load "
             "average (1 min) before each run says how much the 2 cores were shared.", ""]
    if a.mode in ("ttq", "both"):
        lines += ttq(a, out_dir)
    if a.mode in ("ablation", "both"):
        lines += ablation(a, out_dir)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text("\n".join(lines) + "\n")
    print(f"logs in {out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
