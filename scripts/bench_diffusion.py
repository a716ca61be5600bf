"""Diffusion acceptance benchmark: train `unet` and `dit` at their CPU profiles, then score class-conditional
samples with the digit classifier (trained on the real digits only).

    python scripts/bench_diffusion.py [--presets unet dit] [--samples 200] [--ddpm 20] [--out FILE] [k=v ...]

Each preset runs through the real trainer (`python -m trainers PRESET profile=cpu --log ...`), exactly what a
user runs; its wall time includes the periodic evals and sample grids. Afterwards the final checkpoint's EMA
weights draw `--samples` digits (an equal number per class) with the preset's DDIM-20 sampler and guidance,
plus `--ddpm` digits with the full 1000-step DDPM sampler, and the classifier scores both.
Acceptance (issue 5): >= 70% for unet, >= 60% for dit; chance is 10%.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

THRESHOLDS = {"unet": 0.70, "dit": 0.60}
LOADS: dict[str, float] = {}


def train(preset: str, run_dir: Path, overrides: list[str]) -> tuple[float, list[dict]]:
    run_dir.mkdir(parents=True, exist_ok=True)
    log = run_dir / "events.jsonl"
    if log.exists():
        log.unlink()
    cmd = [sys.executable, "-m", "trainers", preset, "profile=cpu", *overrides, "--log", str(log)]
    print("$", " ".join(cmd), flush=True)
    t0 = time.time()
    proc = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.DEVNULL)
    wall = time.time() - t0
    LOADS[preset] = os.getloadavg()[1]  # 5-minute load average at the end of training
    events = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    if proc.returncode != 0:
        end = next((e for e in events if e["type"] == "run_end"), {})
        raise SystemExit(f"{preset}: trainer exited {proc.returncode}: {end.get('error', '')[:2000]}")
    return wall, events


def score(run_dir: Path, n_ddim: int, n_ddpm: int) -> dict:
    import torch

    from trainers import checkpoint
    from trainers.digit_classifier import get_classifier, score_samples
    from trainers.tasks import load_task

    ckpt = checkpoint.load(run_dir / "ckpt.pt")
    cfg = ckpt["config"]
    task = load_task(cfg, torch.device("cpu"))
    model = task.build_model()
    model.load_state_dict(ckpt["model"])
    model.eval()
    _, clf_acc = get_classifier(task.data.size)
    out = {"step": ckpt["step"], "classifier_heldout": clf_acc}
    for sampler, n in (("ddim", n_ddim), ("ddpm", n_ddpm)):
        if n <= 0:
            continue
        labels = torch.arange(n) % 10
        t0 = time.time()
        images = task.generate(model, labels, seed=2026, sampler=sampler)
        acc = score_samples(images, labels)
        per_class = [score_samples(images[labels == c], labels[labels == c]) for c in range(10)]
        out[sampler] = {"n": n, "accuracy": acc, "per_class": per_class, "seconds": time.time() - t0,
                        "name": f"ddpm-{task.diffusion.T}" if sampler == "ddpm" else task.sampler_name()}
    out["guidance"] = float(task.opts["guidance"])
    out["eta"] = float(task.opts["eta"])
    out["eval_samples"] = int(task.opts["eval_samples"])
    return out


def torch_version() -> str:
    import torch

    return torch.__version__


def report(results: dict, args) -> str:
    date = "2026-11-21"
    lines = [
        "# Diffusion: class-conditional sample quality (issue 5)",
        "",
        f"Machine: CPU, 2 cores, shared with other jobs while measured (5-minute load average at the end of "
        f"training: {', '.join(f'{k} {v:.1f}' for k, v in LOADS.items()) or 'not recorded'}; OMP_NUM_THREADS="
        f"{os.environ.get('OMP_NUM_THREADS', 'unset')}), torch {torch_version()} CPU build. Date: {date}.",
        "",
        "Method: `python scripts/bench_diffusion.py` trains each preset's CPU profile through the real trainer "
        "(16x16 grey digits, 1617 training images), then draws class-conditional samples from the EMA "
        "weights and asks a small CNN, trained only on real digits, which digit each sample shows. "
        "A sample counts when the classifier names the class it was conditioned on; chance is 10%.",
        "",
        "| preset | params | steps | train wall time | final val loss | classifier held-out | sampler "
        "| samples | conditioned class recognised | acceptance |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for preset, r in results.items():
        s = r["score"]
        for sampler in ("ddim", "ddpm"):
            if sampler not in s:
                continue
            thr = THRESHOLDS.get(preset)
            verdict = "" if thr is None else (f"{'PASS' if s[sampler]['accuracy'] >= thr else 'FAIL'} (>= {thr:.0%})"
                                              if sampler == "ddim" else "(reference)")
            name = s[sampler]["name"] + (f" (eta {s['eta']:g})" if sampler == "ddim" else "")
            lines.append(f"| {preset} | {r['n_params'] / 1e6:.2f}M | {s['step']} | {r['wall'] / 60:.1f} min | "
                         f"{r['final_val_loss']:.4f} | {s['classifier_heldout']:.1%} | {name}, guidance "
                         f"{s['guidance']:g} | {s[sampler]['n']} | **{s[sampler]['accuracy']:.1%}** | {verdict} |")
    lines += ["", "Per-class recognition (DDIM samples, classes 0-9):", ""]
    for preset, r in results.items():
        pc = r["score"]["ddim"]["per_class"]
        lines.append(f"- {preset}: " + ", ".join(f"{c}: {a:.0%}" for c, a in enumerate(pc)))
    n_eval = next(iter(results.values()))["score"]["eval_samples"] if results else 0
    lines += ["", f"Learning curve (the in-run eval: {n_eval} DDIM samples scored at each eval):", ""]
    for preset, r in results.items():
        curve = ", ".join(f"step {e['step']}: {e['metrics']['sample_accuracy']:.0%}" for e in r["evals"]
                          if "sample_accuracy" in e.get("metrics", {}))
        lines.append(f"- {preset}: {curve}")
    lines += ["", f"Command: `{' '.join(['python', 'scripts/bench_diffusion.py', *sys.argv[1:]])}`", ""]
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", nargs="+", default=["unet", "dit"])
    p.add_argument("--samples", type=int, default=200, help="DDIM samples to score per preset (default 200)")
    p.add_argument("--ddpm", type=int, default=20, help="full-DDPM samples to score per preset (0: skip; slow)")
    p.add_argument("--runs", default=str(ROOT / "runs" / "bench-diffusion"))
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "diffusion.md"))
    p.add_argument("--score-only", action="store_true", help="re-score existing runs without training")
    p.add_argument("overrides", nargs="*", help="k=v overrides for every preset (e.g. train.max_steps=100)")
    args = p.parse_args()
    results = {}
    for preset in args.presets:
        run_dir = Path(args.runs) / preset
        if args.score_only:
            events = [json.loads(x) for x in (run_dir / "events.jsonl").read_text().splitlines() if x.strip()]
            wall = next(e for e in events if e["type"] == "run_end")["metrics"]["wall_time"]
        else:
            wall, events = train(preset, run_dir, args.overrides)
        start = next(e for e in events if e["type"] == "run_start")
        evals = [e for e in events if e["type"] == "eval"]
        results[preset] = {"wall": wall, "n_params": start["n_params"], "evals": evals,
                           "final_val_loss": evals[-1]["val_loss"] if evals else float("nan"),
                           "score": score(run_dir, args.samples, args.ddpm)}
        s = results[preset]["score"]
        print(f"{preset}: {s['step']} steps in {wall / 60:.1f} min; DDIM {s['ddim']['accuracy']:.1%}"
              + (f", DDPM {s['ddpm']['accuracy']:.1%}" if "ddpm" in s else ""), flush=True)
    text = report(results, args)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(text)
    ok = all(r["score"]["ddim"]["accuracy"] >= THRESHOLDS.get(k, 0) for k, r in results.items())
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
