"""Before and after the fidelity fixes: the sequence presets' CPU profiles, side by side.

    python scripts/bench_fidelity.py BEFORE_RUNS AFTER_RUNS [BEFORE_RUNS AFTER_RUNS ...] [--note TEXT]
                                     [--out benchmarks/results/fidelity.md]

Each RUNS folder is a `--runs` folder of scripts/bench_sequence.py (one sub-folder per preset, each with the
event log of `python -m trainers NAME profile=cpu train.max_steps=N`): BEFORE from a checkout of the code
before the fixes, AFTER from this one, with the same settings. Several pairs (e.g. run at different step
counts) are read in turn; a preset present in both folders of a pair gives one row.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

from bench_sequence import read_events, summarize  # noqa: E402


def fmt(x, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def seed_of(log: Path) -> int:
    return next(e for e in read_events(log) if e["type"] == "run_start")["config"]["train"]["seed"]


def row(preset: str, seed: int, before: dict, after: dict) -> str:
    delta = after["final_val"] - before["final_val"]
    return (f'| {preset} | {after["steps"]} | {seed} | {before["params"]:,} / {after["params"]:,} | '
            f'{fmt(before["final_val"], ".3f")} | {fmt(after["final_val"], ".3f")} | {delta:+.3f} | '
            f'{fmt(before["best_val"], ".3f")} | {fmt(after["best_val"], ".3f")} | '
            f'{fmt(before["tokens_per_s"], ",.0f")} | {fmt(after["tokens_per_s"], ",.0f")} | '
            f'{fmt(before["wall_s"], ".0f")} | {fmt(after["wall_s"], ".0f")} |')


def render(pairs: list[tuple[Path, Path]], note: str) -> str:
    out = ["# Fidelity fixes: sequence presets before and after", "",
           "Each preset's CPU profile trained by `python -m trainers NAME profile=cpu train.max_steps=N` "
           "(scripts/bench_sequence.py's runs), once on the code before the fixes (a checkout of main) and once "
           "after, with the same settings and seeds, both at the same time on the same machine (2 cores shared "
           "with other jobs: tokens/s and wall seconds are noisy, losses are not). Val loss is character level "
           "(`eval` events). What changed on these CPU profiles: MoE gets the router z-loss (ST-MoE, weight "
           "1e-3) and drops nothing at eval; Mamba keeps A_log and D out of weight decay and takes mamba_ssm's "
           "initialisation; RWKV-6 trains with L2Wrap, its gate at gain 0.1, undecayed LoRA and a 2x lr on the "
           "decay; minGPT stops decaying its embeddings. nanoGPT runs the same code before and after (a "
           "control for seed noise); BitNet, RetNet and gpt2-124m's CPU profile do too on CPU (their changes "
           "are in kernels=triton and CUDA paths), so they were not re-run.", ""]
    if note:
        out += [note, ""]
    out += ["| preset | steps | seed | params before / after | final val before | final val after | change | "
            "best val before | best val after | tokens/s before | tokens/s after | wall s before | "
            "wall s after |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for before_dir, after_dir in pairs:
        for log in sorted(before_dir.glob("*/events.jsonl")):
            preset = log.parent.name
            other = after_dir / preset / "events.jsonl"
            if not other.is_file():
                continue
            before, after = summarize(preset, log), summarize(preset, other)
            if before["status"] != "completed" or after["status"] != "completed":
                continue
            out.append(row(preset, seed_of(other), before, after))
    return "\n".join(out) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", help="BEFORE_RUNS AFTER_RUNS, repeated")
    p.add_argument("--note", default="", help="a line on when and under what load the runs were measured")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "fidelity.md"))
    args = p.parse_args(argv)
    if len(args.runs) % 2:
        p.error("give the run folders in pairs: BEFORE_RUNS AFTER_RUNS")
    pairs = [(Path(a), Path(b)) for a, b in zip(args.runs[::2], args.runs[1::2])]
    text = render(pairs, args.note)
    Path(args.out).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
