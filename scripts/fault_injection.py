"""Fault injection: kill a real trainer with SIGKILL at random points, resume, and check nothing was lost.

    python scripts/fault_injection.py [--kills 20] [--steps 80] [--seed 0] [--out FILE]

1. A reference run trains a tiny GPT (dropout on, so RNG state matters) for --steps steps, logging every step.
2. A second run is started, SIGKILLed at a random step (sometimes mid-checkpoint), and resumed from its
   last checkpoint, --kills times, then allowed to finish.
3. Checks: after every kill the log replays (`cockpit --replay`, exit 0, status killed); every step event
   ever logged, in every resumed segment, has exactly the reference loss (|diff| <= 1e-6); the final run is
   completed; no temporary checkpoint file is left behind.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TINY = ["model.n_layer=1", "model.n_head=2", "model.n_embd=32", "model.block_size=32", "model.dropout=0.1",
        "train.batch_size=8", "train.eval_iters=2", "train.log_interval=1", "train.checkpoint_interval=3",
        "train.eval_interval=20", "train.sample_interval=0", "train.warmup_steps=5", "train.system_interval=0.5"]


def events(log: Path) -> list[dict]:
    out = []
    for line in log.read_text(errors="replace").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            pass
    return out


def last_step(log: Path) -> int:
    if not log.exists():
        return 0
    steps = [e["step"] for e in events(log) if e.get("type") == "step"]
    return steps[-1] if steps else 0


# A fixed thread count for every run: on a busy machine the trainer's CPU governor would change it, and a sum
# split over another number of threads rounds differently, which is not what this script looks for.
ENV = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}


def trainer(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "trainers", "nanogpt", *args], cwd=ROOT, env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--steps", type=int, default=80)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dir", default=str(ROOT / "runs" / f"fault-injection-{time.strftime('%Y%m%d-%H%M%S')}"))
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    rng = random.Random(a.seed)
    base = Path(a.dir)
    common = [*TINY, f"train.max_steps={a.steps}", f"train.lr_decay_steps={a.steps}"]
    ref_log = base / "reference" / "events.jsonl"
    t0 = time.time()
    subprocess.run([sys.executable, "-m", "trainers", "nanogpt", *common, "--log", str(ref_log)], cwd=ROOT, env=ENV,
                   check=True, stdout=subprocess.DEVNULL)
    ref = {e["step"]: e["loss"] for e in events(ref_log) if e["type"] == "step"}
    run_dir = base / "faulty"
    log = run_dir / "events.jsonl"
    kills, replays_ok, resumes, fresh_starts, worst = 0, 0, 0, 0, 0.0
    problems: list[str] = []
    while kills < a.kills:
        ckpt = run_dir / "ckpt.pt"
        if ckpt.exists():
            p = trainer(["--resume", str(run_dir), f"train.max_steps={a.steps}"])
            resumes += 1
        else:
            p = trainer([*common, "--log", str(log)])
            fresh_starts += 1
        start = last_step(log)
        target = start + rng.randint(1, 8)
        while p.poll() is None and last_step(log) < target:
            time.sleep(0.02)
        time.sleep(rng.random() * 0.2)  # sometimes lands inside a checkpoint write or an eval
        if p.poll() is not None:
            break  # it finished before we could kill it
        p.send_signal(signal.SIGKILL)
        p.wait()
        kills += 1
        r = subprocess.run([sys.executable, "-m", "cockpit", "--replay", str(log)], cwd=ROOT, capture_output=True,
                           text=True, stdin=subprocess.DEVNULL)
        if r.returncode == 0 and "status killed" in r.stdout:
            replays_ok += 1
        else:
            problems.append(f"kill {kills}: replay exit {r.returncode}: {r.stderr.strip()[-200:]}")
    # finish the run
    p = trainer(["--resume", str(run_dir), f"train.max_steps={a.steps}"]) if (run_dir / "ckpt.pt").exists() \
        else trainer([*common, "--log", str(log)])
    p.wait()
    evs = events(log)
    for e in evs:
        if e.get("type") == "step":
            d = abs(e["loss"] - ref[e["step"]])
            worst = max(worst, d)
            if d > 1e-6:
                problems.append(f"step {e['step']}: loss {e['loss']} != reference {ref[e['step']]}")
    end = [e for e in evs if e.get("type") == "run_end"]
    if not end or end[-1]["status"] != "completed" or end[-1]["step"] != a.steps:
        problems.append(f"final run_end: {end[-1] if end else 'missing'}")
    leftovers = list(run_dir.glob(".ckpt.pt.tmp*"))
    if leftovers:
        problems.append(f"temporary checkpoint files left: {leftovers}")
    n_steps = sum(1 for e in evs if e.get("type") == "step")
    summary = [
        f"## Fault injection ({time.strftime('%Y-%m-%d')}, CPU, `python scripts/fault_injection.py --kills {a.kills} "
        f"--steps {a.steps} --seed {a.seed}`)", "",
        "| what | result |", "| --- | --- |",
        f"| SIGKILLs of a real trainer at random steps | {kills} |",
        f"| logs that replayed after a kill (exit 0, status killed) | {replays_ok}/{kills} |",
        f"| resumes from the last checkpoint / fresh starts (killed before any checkpoint) | {resumes} / {fresh_starts} |",
        f"| step events logged across all segments, each compared with the uninterrupted run | {n_steps} |",
        f"| largest loss difference from the uninterrupted run | {worst:.2e} |",
        f"| final status | {end[-1]['status'] if end else 'missing'} at step {end[-1]['step'] if end else '?'} |",
        f"| problems | {len(problems)} |",
        f"| wall time | {time.time() - t0:.0f} s |", ""]
    text = "\n".join(summary + [f"- {p}" for p in problems[:20]]) + "\n"
    print(text)
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(text)
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main())
