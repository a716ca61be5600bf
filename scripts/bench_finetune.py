"""Fine-tuning benchmark: writes benchmarks/results/finetune.md.

(a) Shakespeare -> Milton on CPU. Trains a nanogpt Shakespeare checkpoint with the CPU profile through the real
    trainer (`python -m trainers nanogpt ...`, or reuses one: --base-run), then fine-tunes it on the embedded Milton
    corpus with the lora and qlora presets' CPU profiles, each to max_steps. The Milton val loss of the base (step 0)
    is measured with the fine-tune task's own evaluate() on the untouched model (adapters are a no-op); the goal is
    read at the best `eval` event inside the first --budget seconds; the trainer's CPU seconds are sampled too.
(b) Memory of fine-tuning GPT-2 124M (random weights of GPT-2's shape: bytes do not depend on the values) on CPU:
    full fine-tune vs LoRA vs QLoRA, each measured in its own subprocess: parameter, quantisation-state, gradient,
    optimizer-state and saved-activation bytes of one training step (trainers.tasks.finetune.measure_method), and
    the process's peak RSS.

    python scripts/bench_finetune.py [--base-steps 800 | --base-run RUN_DIR] [--budget 300] [--skip-a] [--skip-b]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
OUT = ROOT / "benchmarks" / "results" / "finetune.md"
GPT2_124M = {"n_layer": 12, "n_head": 12, "n_embd": 768, "block_size": 1024, "dropout": 0.0, "bias": True}


def events(path: Path) -> list[dict]:
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            pass
    return out


def cpu_seconds(pid: int) -> float | None:
    """user + system CPU seconds of a running process (all its threads), from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def run_trainer(args: list[str], log: Path, cap: float | None = None) -> tuple[int, float, list]:
    """Run `python -m trainers ARGS --log LOG` (SIGTERM = stop at `cap` seconds, if given).
    Returns (exit code, wall seconds, [(unix time, CPU seconds used so far)] sampled every second)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    if log.exists():
        log.unlink()
    t0 = time.time()
    p = subprocess.Popen([sys.executable, "-m", "trainers", *args, "--log", str(log)], cwd=ROOT,
                         stdout=subprocess.DEVNULL, stderr=open(log.with_suffix(".stderr"), "w"))
    cpu = []
    while p.poll() is None:
        c = cpu_seconds(p.pid)
        if c is not None:
            cpu.append((time.time(), c))
        if cap is not None and time.time() - t0 > cap:
            p.send_signal(signal.SIGTERM)
            p.wait(timeout=120)
            break
        time.sleep(1.0)
    return p.returncode, time.time() - t0, cpu


def cpu_at(samples: list, t: float) -> float | None:
    before = [c for (ts, c) in samples if ts <= t]
    return before[-1] if before else None


def base_val_loss(method: str, overrides: list[str]) -> float:
    """The fine-tune task's evaluate() on the model as built (adapters are a no-op): the step-0 val loss."""
    import torch

    from trainers import config
    from trainers.tasks import load_task

    cfg = config.load(method, overrides, profile="cpu", has_cuda=False)
    torch.manual_seed(cfg["train"]["seed"])
    task = load_task(cfg, torch.device("cpu"))
    model = task.build_model()
    model.eval()
    return task.evaluate(model, 0)["val_loss"]


def part_a(work: Path, base_steps: int, budget: float, ft_steps: int, base_run: str | None = None) -> dict:
    if base_run:  # a nanogpt run trained earlier (its events.jsonl and ckpt.pt)
        base_log = Path(base_run) / "events.jsonl"
        ev = events(base_log)
        end = next(e for e in ev if e["type"] == "run_end")
        wall, base_steps = end["metrics"]["wall_time"], end["step"]
    else:
        base_log = work / "shakespeare" / "events.jsonl"
        code, wall, _ = run_trainer(["nanogpt", f"train.max_steps={base_steps}", f"train.eval_interval={base_steps}",
                                     "train.sample_interval=0", f"train.checkpoint_interval={base_steps}"], base_log)
        assert code == 0, f"base run failed: {base_log.with_suffix('.stderr').read_text()[-2000:]}"
        ev = events(base_log)
    base_eval = [e for e in ev if e["type"] == "eval"][-1]
    ckpt = base_log.parent / "ckpt.pt"
    assert ckpt.is_file(), f"no checkpoint beside {base_log}"
    res = {"load_avg_1min": os.getloadavg()[0], "base": {"steps": base_steps, "wall_s": wall, "shakespeare_val_loss": base_eval["val_loss"],
                    "val_at_step": base_eval["step"], "ckpt": str(ckpt)}, "runs": {}}
    for method in ("lora", "qlora"):
        overrides = [f"finetune.base={ckpt}", f"train.max_steps={ft_steps}", "train.eval_interval=50",
                     "train.sample_interval=0", f"train.checkpoint_interval={ft_steps}",
                     "finetune.compare_memory=false"]
        start = base_val_loss(method, overrides)
        log = work / method / "events.jsonl"
        code, wall, cpu = run_trainer([method, *overrides], log, cap=4 * budget)
        ev = events(log)
        t_start = next(e["time"] for e in ev if e["type"] == "run_start")
        all_evals = [e for e in ev if e["type"] == "eval"]

        def point(e):
            return None if e is None else {
                "step": e["step"], "val_loss": e["val_loss"], "s": e["time"] - t_start,
                "cpu_s": cpu_at(cpu, e["time"]), "drop_pct": 100 * (start - e["val_loss"]) / start}

        inside = [e for e in all_evals if e["time"] - t_start <= budget]
        goal = next((e for e in all_evals if 100 * (start - e["val_loss"]) / start >= 15), None)
        end = next((e for e in ev if e["type"] == "run_end"), {})
        samples = [e for e in ev if e["type"] == "sample"]
        rcfg = next(e["config"] for e in ev if e["type"] == "run_start")
        last = all_evals[-1] if all_evals else {"metrics": {}}
        res["runs"][method] = {
            "start_val_loss": start, "in_budget": point(min(inside, key=lambda e: e["val_loss"]) if inside else None),
            "end": point(all_evals[-1] if all_evals else None), "first_15pct": point(goal),
            "status": end.get("status"), "exit_code": code, "wall_s": wall, "cpu_s": cpu[-1][1] if cpu else None,
            "trainable_params": last["metrics"].get("trainable_params"), "params": last["metrics"].get("params"),
            "curve": [(e["step"], round(e["val_loss"], 4), round(e["time"] - t_start, 1)) for e in all_evals],
            "sample": samples[-1]["text"][:200] if samples else "",
            "settings": {**{k: rcfg["finetune"][k] for k in ("rank", "alpha", "dropout", "targets", "lr_ratio")},
                         **{k: rcfg["train"][k] for k in ("lr", "min_lr", "batch_size", "max_steps")},
                         "block_size": rcfg["model"]["block_size"]},
            "optimizer_log": next((e["message"] for e in ev if e["type"] == "log" and "optimizer" in e["message"]), ""),
        }
    return res


def measure_one(method: str, batch: int, seq: int, dropout: float = 0.0) -> dict:
    """In a fresh process: one measured training step of `method` on GPT-2 124M, plus peak RSS."""
    import torch

    from trainers.tasks.finetune import DEFAULTS, build_base, measure_method

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    base = {"arch": "gpt", "model": GPT2_124M, "vocab_size": 50257, "weights": None, "path": ""}
    ft = {**DEFAULTS, "targets": "all", "rank": 8, "alpha": 16.0, "dropout": dropout}
    train = {"lr": 1e-4, "beta1": 0.9, "beta2": 0.99, "weight_decay": 0.0}
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 50257, (batch, seq), generator=g)
    y = torch.randint(0, 50257, (batch, seq), generator=g)
    t0 = time.time()
    row = measure_method(lambda: build_base(base), ft, method, (x, y), train, torch.device("cpu"))
    row["step_s"] = time.time() - t0
    row["dropout"] = dropout
    row["peak_rss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return row


def part_b(batch: int, seq: int) -> list[dict]:
    rows = []
    for method, dropout in (("full", 0.0), ("lora", 0.0), ("qlora", 0.0), ("lora", 0.05), ("qlora", 0.05)):
        out = subprocess.run([sys.executable, __file__, "--measure", method, "--batch", str(batch), "--seq", str(seq),
                              "--dropout", str(dropout)],
                             cwd=ROOT, capture_output=True, text=True, timeout=1800)
        if out.returncode != 0:
            raise RuntimeError(f"measuring {method} failed:\n{out.stderr[-3000:]}")
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    return rows


def _settings(a: dict) -> str:
    st = next(iter(a["runs"].values())).get("settings")
    if not st:
        return "settings not recorded"
    return (f"rank {st['rank']}, alpha {st['alpha']:g}, adapter dropout {st['dropout']:g}, targets {st['targets']}, "
            f"LoRA+ B/A lr ratio {st['lr_ratio']:g}; lr {st['lr']:g} cosine to {st['min_lr']:g} over "
            f"{st['max_steps']} steps; batch {st['batch_size']} x {st['block_size']} characters")


def mb(n) -> str:
    return "n/a" if n is None else f"{n / 2**20:,.1f} MiB"


def write_md(a: dict | None, b: list[dict] | None, args) -> str:
    lines = ["# Fine-tuning: LoRA and QLoRA", "",
             "Machine: CPU, 2 cores shared with other jobs (load averages below), no GPU. "
             "Date: 2026-11-21. torch " + args.torch + ", bitsandbytes " + args.bnb + ".",
             "Produced by `python scripts/bench_finetune.py`" +
             (f"; part (a) ran as `... {a['cmd']}`" if a and a.get("cmd") else "") +
             (f"; part (b) as `... {args.b_cmd}`" if b and getattr(args, "b_cmd", None) else "") + ".", ""]
    if a:
        base = a["base"]
        load = a.get("load_avg_1min")
        lines += ["## (a) Shakespeare checkpoint fine-tuned on Milton, CPU", "",
                  f"Load average when the fine-tunes started: {load:.1f} on 2 cores." if load is not None else
                  "Load average when the fine-tunes started: not recorded.", "",
                  f"Base: `nanogpt` CPU profile (4 layers, 128 wide, 64-character context, char tokenizer) trained "
                  f"{base['steps']} steps on the embedded Shakespeare through the real trainer "
                  f"(`python -m trainers nanogpt train.max_steps={base['steps']}`) in {base['wall_s']:.0f} s of "
                  f"wall-clock on the loaded machine; Shakespeare val loss {base['shakespeare_val_loss']:.3f}.",
                  f"Fine-tunes: the `lora` and `qlora` presets' CPU profile with `finetune.base=<that ckpt.pt>` "
                  f"({_settings(a)}), default corpus = embedded Milton. Each run goes to max_steps (eval every 50 "
                  "steps); the goal is read at the best eval inside the first "
                  f"{args.budget:.0f} s of wall-clock after `run_start`. Start = the fine-tune task's evaluate() on "
                  "the model at step 0 (adapters are a no-op, so it is the base's Milton val loss; same 20 val "
                  "batches as every eval). CPU s = the trainer process's user+system CPU time (2 threads), which "
                  "other jobs on the machine do not inflate the way they inflate wall-clock.", "",
                  f"| method | trainable / total params | Milton val loss at step 0 | within {args.budget:.0f} s: val loss (step, s) | drop | goal >= 15% | "
                  "end of run: val loss (step, wall s, CPU s) | drop | first eval >= 15% drop (step, wall s, CPU s) |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]

        def pt(p, cpu=False):
            if p is None:
                return "not reached"
            extra = f", {p['cpu_s']:.0f} CPU s" if cpu and p.get("cpu_s") is not None else ""
            return f"{p['val_loss']:.3f} ({p['step']}, {p['s']:.0f} s{extra})"

        for m, r in a["runs"].items():
            ib, en = r["in_budget"], r["end"]
            ok = ib is not None and ib["drop_pct"] >= 15
            lines.append(f"| {m} | {r['trainable_params']:,} / {r['params']:,} | {r['start_val_loss']:.3f} | {pt(ib)} | "
                         f"{ib['drop_pct']:.1f}% | {'yes' if ok else 'NO'} | {pt(en, True)} | {en['drop_pct']:.1f}% | "
                         f"{pt(r['first_15pct'], True)} |" if ib and en else f"| {m} | run produced no eval |")
        lines += ["", "Val-loss curves (step, val loss, seconds since run_start):", ""]
        for m, r in a["runs"].items():
            lines.append(f"- {m}: " + ", ".join(f"({s}, {v:.3f}, {t:.0f} s)" for s, v, t in r["curve"]))
        lines += [""]
        for m, r in a["runs"].items():
            opt = r["optimizer_log"].removeprefix("optimizer: ")
            lines += [f"- {m} optimizer: {opt}", f"- {m} last sample: `{r['sample'][:160]!r}`"]
        lines += [""]
    if b:
        lines += ["## (b) Memory of one training step, GPT-2 124M shape, CPU (measured bytes)", "",
                  f"Load average when it started: {args.b_load:.1f} on 2 cores." if getattr(args, "b_load", None)
                  is not None else "Load average when it started: not recorded.", "",
                  f"Model: GPT-2 124M shape (12 layers, 768 wide, vocab 50,257, tied embeddings), random weights; "
                  f"micro-batch {args.batch} x {args.seq} tokens, float32 on CPU. LoRA/QLoRA: rank 8, alpha 16 on "
                  "every projection (q, k, v, o, fc, proj). Each method runs in its own process: params = bytes of "
                  "parameter tensors (NF4 weights as stored, 0.5 B each), quant state = absmax/code tables of the "
                  "4-bit layers, grads after backward, optimizer state after one step (torch AdamW; bitsandbytes "
                  "AdamW8bit for QLoRA), activations = tensors saved for backward (saved-tensor hooks, "
                  "trainers/memory.py), peak RSS = the process's maximum resident set (includes the fp32 base "
                  "before quantisation, Python and libraries).", "",
                  "| method | adapter dropout | params | trainable | param bytes | quant state | grads | optimizer | activations | sum | peak RSS | step (s) |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for r in b:
            total = sum(r[k] for k in ("params", "quant_state", "grads", "optimizer", "activations"))
            drop = "-" if r["method"] == "full" else f"{r.get('dropout', 0.0):g}"
            lines.append(f"| {r['method']} | {drop} | {r['n_params']:,} | {r['trainable_params']:,} | {mb(r['params'])} | "
                         f"{mb(r['quant_state'])} | {mb(r['grads'])} | {mb(r['optimizer'])} | {mb(r['activations'])} | "
                         f"{mb(total)} | {mb(r['peak_rss'])} | {r['step_s']:.1f} |")
        lines += ["",
                  "Reading it: LoRA drops the gradients and optimizer state of the frozen weights (about 1.4 GiB "
                  "here); QLoRA also stores the 85M linear weights in NF4 with double quantisation: 0.5 B per weight "
                  "packed plus ~0.016 B of quantisation state, so its param bytes are the fp32 token/position "
                  "embeddings (150 MiB, kept in full precision: wte is tied to the output head), norms, biases and "
                  "adapters, plus 40.5 MiB of packed weights. Activations do not shrink: the input gradient still "
                  "flows through every frozen layer, and adapter dropout adds a dropped copy of each adapted layer's "
                  "input (plus its mask), +37% here. With one 1024-token sequence the saved activations are the "
                  "largest item for both adapter methods. Peak RSS includes the fp32 base every process builds "
                  "before freezing or quantising it (~0.5 GiB) and Python + torch + bitsandbytes themselves; "
                  "step (s) is the wall time of building that base plus the one measured step.", ""]
    lines += ["## Not measured here", "",
              "- CUDA peak memory (`torch.cuda.max_memory_allocated`) of full / LoRA / QLoRA fine-tuning, bf16 compute, "
              "and paged 8-bit AdamW: no GPU was lent to this task.",
              "- The largest GPT-2-shaped model that QLoRA fits under a 12 GB cap: needs a GPU; not measured.", ""]
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base-steps", type=int, default=800)
    p.add_argument("--ft-steps", type=int, default=400)
    p.add_argument("--budget", type=float, default=300.0)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--seq", type=int, default=1024)
    p.add_argument("--base-run", help="reuse a nanogpt run directory (events.jsonl + ckpt.pt) as the base")
    p.add_argument("--skip-a", action="store_true")
    p.add_argument("--skip-b", action="store_true")
    p.add_argument("--work", default=str(ROOT / "runs" / "bench-finetune"))
    p.add_argument("--measure", help=argparse.SUPPRESS)
    p.add_argument("--dropout", type=float, default=0.0, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.measure:
        print(json.dumps(measure_one(args.measure, args.batch, args.seq, args.dropout)))
        return 0
    import bitsandbytes
    import torch

    args.load = os.getloadavg()[0]
    args.torch, args.bnb = torch.__version__, bitsandbytes.__version__
    args.cmd = " ".join(sys.argv[1:]) or "defaults"
    saved_path = Path(args.work) / "results.json"
    saved = json.loads(saved_path.read_text()) if saved_path.is_file() else {}  # a part skipped now keeps its last result
    a = saved.get("a") if args.skip_a else part_a(Path(args.work), args.base_steps, args.budget, args.ft_steps,
                                                  args.base_run)
    if not args.skip_a:
        a["cmd"] = args.cmd
    b = saved.get("b") if args.skip_b else part_b(args.batch, args.seq)
    args.b_cmd = saved.get("b_cmd") if args.skip_b else args.cmd
    b_load = saved.get("b_load") if args.skip_b else args.load
    OUT.parent.mkdir(parents=True, exist_ok=True)
    saved_path.parent.mkdir(parents=True, exist_ok=True)
    saved_path.write_text(json.dumps({"a": a, "b": b, "b_cmd": args.b_cmd, "b_load": b_load}, indent=2, default=str))
    args.b_load = b_load
    OUT.write_text(write_md(a, b, args))
    print(OUT.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
