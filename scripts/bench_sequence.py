"""Side-by-side benchmark of the sequence presets at their CPU profile, plus full-size VRAM estimates.

    python scripts/bench_sequence.py [--steps 200] [--out benchmarks/results/sequence.md] [--runs DIR]
                                     [--presets nanogpt,mamba,...] [--skip-train] [--acceptance]

1. Trains every preset (nanogpt, mingpt, bitnet, mamba, rwkv, retnet, moe, gpt2-124m) on its CPU profile for
   the same number of steps, each in its own `python -m trainers` subprocess writing an event log, and reads
   from those logs: parameters (run_start), tokens/s (step events, median after the first), final and best
   val loss and when val loss first fell below 2.2 (eval), activation bytes (the first memory event, measured
   by saved-tensor hooks). The CPU profiles differ in batch and model shape on purpose (each is tuned to learn
   within minutes); the step budget is what is equal.
2. Estimates full-size training memory per preset by building the full profile's model on the meta device
   and running one forward/backward under the activation probe: fp32 weights, grads, AdamW state (2 x fp32)
   and saved activations of one micro-batch (fp32; bf16 autocast roughly halves matmul activations). With
   train.activation_checkpointing, the saved activations are the checkpointed block inputs plus one block
   recomputed during backward. These are estimates: no GPU was available to measure the peak.
3. With --acceptance, also runs each new preset exactly as a user would, `cockpit train NAME --headless` on
   its CPU profile (its own step count), and reports when character-level val loss first fell below 2.2
   and the final val loss and wall time (the issue's acceptance: < 2.2 within 5 minutes).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PRESETS = ["nanogpt", "mingpt", "bitnet", "mamba", "rwkv", "retnet", "moe", "gpt2-124m"]
NEW_PRESETS = ["bitnet", "mamba", "rwkv", "retnet", "moe", "gpt2-124m"]
TARGET = 2.2


def read_events(path: Path) -> list[dict]:
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            pass  # a torn last line
    return out


def train(preset: str, steps: int, runs: Path) -> Path:
    log = runs / preset / "events.jsonl"
    if log.exists():
        log.unlink()
    eval_every = max(steps // 4, 1)
    cmd = [sys.executable, "-m", "trainers", preset, "profile=cpu", f"train.max_steps={steps}",
           f"train.eval_interval={eval_every}", "train.checkpoint_interval=0", "--log", str(log)]
    env = {**os.environ, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
    t0 = time.time()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    print(f"{preset}: exit {proc.returncode} in {time.time() - t0:.0f}s", file=sys.stderr)
    if proc.returncode != 0:
        print(proc.stderr[-2000:], file=sys.stderr)
    return log


def accept(preset: str, runs: Path) -> Path:
    """`cockpit train NAME --headless` with no overrides: the preset's own CPU profile."""
    log = runs / f"accept-{preset}" / "events.jsonl"
    if log.exists():
        log.unlink()
    env = {**os.environ, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
    t0 = time.time()
    proc = subprocess.run([sys.executable, "-m", "cockpit", "train", preset, "--headless", "--log", str(log)],
                          cwd=ROOT, env=env, capture_output=True, text=True)
    print(f"accept {preset}: exit {proc.returncode} in {time.time() - t0:.0f}s", file=sys.stderr)
    return log


def summarize(preset: str, log: Path) -> dict:
    ev = read_events(log)
    start = next(e for e in ev if e["type"] == "run_start")
    steps = [e for e in ev if e["type"] == "step"]
    evals = [e for e in ev if e["type"] == "eval"]
    memory = next((e for e in ev if e["type"] == "memory"), None)
    end = next((e for e in ev if e["type"] == "run_end"), {})
    first_below = next((e for e in evals if e["val_loss"] < TARGET), None)
    elapsed_at = {e["step"]: e.get("elapsed") for e in steps}
    cfg = start["config"]
    return {
        "preset": preset, "arch": start["arch"], "params": start["n_params"],
        "shape": shape_of(cfg),
        "batch": f'{cfg["train"]["batch_size"]}x{cfg["model"]["block_size"]}',
        "steps": steps[-1]["step"] if steps else 0,
        "tokens_per_s": statistics.median(s["throughput"] for s in steps[1:]) if len(steps) > 1 else None,
        "final_val": evals[-1]["val_loss"] if evals else None,
        "best_val": min(e["val_loss"] for e in evals) if evals else None,
        "below_target": (first_below["step"], elapsed_at.get(first_below["step"])) if first_below else None,
        "activation_bytes": memory["totals"]["activations"] if memory else None,
        "wall_s": (end.get("metrics") or {}).get("wall_time"),
        "status": end.get("status"),
    }


def shape_of(cfg: dict) -> str:
    m = cfg["model"]
    return f'{m.get("n_layer")}L x {m.get("n_embd")}'


def estimate_full(preset: str) -> dict:
    """Full-profile training memory, estimated on the meta device (see the module docstring)."""
    import torch

    from trainers import config
    from trainers.memory import ActivationProbe
    from trainers.tasks import load_task

    cfg = config.load(preset, profile="full", has_cuda=True)
    cfg["device"] = "cpu"
    task = load_task(cfg, torch.device("cpu"))
    ckpt = bool(cfg["train"]["activation_checkpointing"])

    def measure(checkpointing: bool):
        with torch.device("meta"):
            model = task.build_model()
        if hasattr(getattr(model, "config", None), "activation_checkpointing"):
            model.config.activation_checkpointing = checkpointing  # train.activation_checkpointing
        batch = tuple(b.to("meta") for b in task.get_batch("train", 0))
        probe = ActivationProbe(model)
        model.train()
        with probe.capture():
            loss = task.loss(model, batch)
        loss.backward()
        return model, probe

    model, probe = measure(False)
    per_layer = max(probe.layers.values()) if probe.layers else 0
    acts = probe.total
    if ckpt:
        _, probe_ckpt = measure(True)
        acts = probe_ckpt.total + per_layer
    params = {id(p): p for p in model.parameters()}.values()
    n = sum(p.numel() for p in params)
    est = {"params": n * 4, "grads": n * 4, "optimizer": n * 8, "activations": acts}
    return {"preset": preset, "n_params": n, "batch": f'{cfg["train"]["batch_size"]}x{cfg["model"]["block_size"]}',
            "grad_accum": cfg["train"]["grad_accum"], "checkpointing": ckpt, "tokenizer": cfg["data"]["tokenizer"],
            **est, "total": sum(est.values()), "budget": cfg["vram_budget_gb"] * 2**30}


def mib(b) -> str:
    return "-" if b is None else f"{b / 2**20:,.1f}"


def gib(b) -> str:
    return f"{b / 2**30:.2f}"


def render_acceptance(rows: list[dict]) -> list[str]:
    out = ["", "## Acceptance: each new preset as a user runs it", "",
           "`cockpit train NAME --headless` with no overrides (the preset's CPU profile, its own step count), "
           "same machine and conditions as above. Elapsed seconds are the trainer's `elapsed` at that step "
           "(training, evals and samples so far; start-up excluded).", "",
           "| preset | steps | val < 2.2 first at (step, s) | final val | wall s | status |",
           "| --- | ---: | --- | ---: | ---: | --- |"]
    for r in rows:
        below = f'{r["below_target"][0]}, {r["below_target"][1]:.0f}' if r["below_target"] else "not reached"
        out.append(f'| {r["preset"]} | {r["steps"]} | {below} | {r["final_val"]:.3f} | {r["wall_s"]:.0f} | '
                   f'{r["status"]} |')
    return out


def render(rows: list[dict], fulls: list[dict], steps: int, accepted: list[dict]) -> str:
    date = "2026-11-21"
    out = [f"# Sequence architectures: CPU profiles side by side ({date})", "",
           f"Machine: CPU, 2 cores (shared with other jobs while measured), torch "
           f"{__import__('torch').__version__}, OMP_WAIT_POLICY=PASSIVE. Each preset ran its CPU profile for "
           f"the same {steps} optimizer steps (`python -m trainers NAME profile=cpu train.max_steps={steps}`); "
           "numbers are read from the event logs the runs wrote: params from `run_start`, tokens/s = median of "
           "`step` throughputs, val loss from `eval` (character level), activation bytes from the first "
           "`memory` event (saved-tensor hooks, one micro-batch). Wall time includes evals and samples.", "",
           "| preset | arch | shape | batch | params | tokens/s | final val | best val | val < 2.2 at "
           "(step, s) | activations MiB | wall s |",
           "| --- | --- | --- | --- | ---: | ---: | ---: | ---: | --- | ---: | ---: |"]
    for r in rows:
        below = f'{r["below_target"][0]}, {r["below_target"][1]:.0f}' if r["below_target"] else "not reached"
        out.append(f'| {r["preset"]} | {r["arch"]} | {r["shape"]} | {r["batch"]} | {r["params"]:,} | '
                   f'{r["tokens_per_s"]:,.0f} | {r["final_val"]:.3f} | {r["best_val"]:.3f} | {below} | '
                   f'{mib(r["activation_bytes"])} | {r["wall_s"]:.0f} |')
    out += ["", "## Full-size training memory (estimate; no GPU was available for a measured peak)", "",
            "Full profile of each preset built on the meta device; one forward/backward under the activation "
            "probe. fp32 weights + fp32 grads + AdamW (2 x fp32) + saved activations of one micro-batch in fp32 "
            "(bf16 autocast stores most matmul inputs in half the bytes, so the real figure is lower). With "
            "activation checkpointing: checkpointed block inputs + one block recomputed in backward. The "
            "measured peak under `torch.cuda.set_per_process_memory_fraction(12/total)` is still to be taken "
            "on a GPU.", "",
            "| preset | params | micro-batch | grad accum | tokenizer | ckpt | weights GiB | grads GiB | "
            "AdamW GiB | activations GiB | total GiB | fits 12 GiB |",
            "| --- | ---: | --- | ---: | --- | --- | ---: | ---: | ---: | ---: | ---: | --- |"]
    for f in fulls:
        out.append(f'| {f["preset"]} | {f["n_params"]:,} | {f["batch"]} | {f["grad_accum"]} | {f["tokenizer"]} | '
                   f'{"yes" if f["checkpointing"] else "no"} | {gib(f["params"])} | {gib(f["grads"])} | '
                   f'{gib(f["optimizer"])} | {gib(f["activations"])} | {gib(f["total"])} | '
                   f'{"yes" if f["total"] <= f["budget"] else "NO"} |')
    if accepted:
        out += render_acceptance(accepted)
    return "\n".join(out) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "sequence.md"))
    p.add_argument("--runs", default=str(ROOT / "runs" / "bench-sequence"))
    p.add_argument("--presets", default=",".join(PRESETS))
    p.add_argument("--skip-train", action="store_true", help="re-read existing logs in --runs")
    p.add_argument("--acceptance", action="store_true",
                   help="also run `cockpit train NAME --headless` for the new presets (their full CPU profile)")
    args = p.parse_args(argv)
    presets = [s for s in args.presets.split(",") if s]
    runs = Path(args.runs)
    rows = []
    for name in presets:
        log = runs / name / "events.jsonl" if args.skip_train else train(name, args.steps, runs)
        rows.append(summarize(name, log))
    accepted = []
    if args.acceptance:
        for name in [n for n in NEW_PRESETS if n in presets]:
            log = runs / f"accept-{name}" / "events.jsonl" if args.skip_train else accept(name, runs)
            accepted.append(summarize(name, log))
    fulls = [estimate_full(name) for name in presets]
    text = render(rows, fulls, args.steps, accepted)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
