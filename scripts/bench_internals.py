"""What the internals events cost: per preset, at its CPU profile and its train.internals_interval, the time
one probe adds to its step as a share of the time the steps between two probes take (goal: <= 2%).

    python scripts/bench_internals.py [--presets nanogpt mamba ...] [--steps 8] [--probes 4]
                                      [--out benchmarks/results/internals.md]

Each preset's trainer is built in this process (trainers/loop.py Trainer, exactly as `cockpit train` builds it)
and its training steps are driven as the loop drives them. A plain step (forward, backward, clipping,
optimizer step) is timed --steps times; a probe (UpdateWatch's gradient norms and weight copy before the
update, then its update ratios, the task's probe forward in eval mode and the event written to the log:
Trainer.internals_event) --probes times, each after a real training step, the two kinds interleaved so that
a shared machine's drifting load weighs on both alike. Medians of each; the share is probe / (interval x
step). Thread count: torch's default for this machine, whatever the load (given with the results).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))
from bench_speed import machine_line  # noqa: E402

DEFAULT_OUT = ROOT / "benchmarks" / "results" / "internals.md"
GOAL = 0.02


def measure(preset: str, steps: int, probes: int, run_dir: Path) -> dict:
    import torch

    from trainers import config
    from trainers.internals import UpdateWatch
    from trainers.loop import Trainer

    cfg = config.load(preset, ["profile=cpu", "train.compile=false", f"train.max_steps={steps + probes + 2}"])
    interval = cfg["train"]["internals_interval"]
    trainer = Trainer(cfg, run_dir / "events.jsonl")
    try:
        trainer.raw_model.train()
        plain, probe, step = [], [], 0

        def one_step(watched: bool) -> float:
            """A training step as the loop takes it; its time when plain, the probe's extra time when watched."""
            nonlocal step
            step += 1
            t0 = time.perf_counter()
            trainer.train_step(step, None)
            t1 = time.perf_counter()
            watch = UpdateWatch(trainer.raw_model) if watched else None
            t2 = time.perf_counter()
            trainer.optimizer.step()
            trainer.optimizer.zero_grad(set_to_none=True)
            trainer.step = step
            t3 = time.perf_counter()
            if watch is None:
                return t3 - t0
            trainer.internals_event(watch)
            return (t2 - t1) + (time.perf_counter() - t3)

        one_step(False)  # warm-up: first-call allocations and lazy initialisation
        for i in range(max(steps, probes)):  # interleaved: a shared machine's load drifts over both alike
            if i < steps:
                plain.append(one_step(False))
            if i < probes:
                probe.append(one_step(True))
        step_s = statistics.median(plain)
        probe_s = statistics.median(probe)
        return {"preset": preset, "arch": cfg["arch"], "interval": interval, "step_ms": step_s * 1e3,
                "probe_ms": probe_s * 1e3, "share": probe_s / (interval * step_s) if interval else 0.0,
                "threads": torch.get_num_threads()}
    finally:
        trainer.writer.close()
        trainer._release_run_dir()


def table(rows: list[dict], failed: dict[str, str]) -> str:
    lines = ["| preset | arch | interval | step (ms) | probe (ms) | cost at the interval | goal ≤ 2% |",
             "| --- | --- | ---: | ---: | ---: | ---: | --- |"]
    for r in rows:
        ok = "yes" if r["share"] <= GOAL else "**no**"
        lines.append(f"| {r['preset']} | {r['arch']} | {r['interval']} | {r['step_ms']:.1f} | {r['probe_ms']:.1f} | "
                     f"{100 * r['share']:.2f}% | {ok} |")
    for name, why in failed.items():
        lines.append(f"| {name} | | | | | not measured: {why} | |")
    return "\n".join(lines)


def write(out: Path, a, machine: str, rows: list[dict], failed: dict[str, str], done: bool) -> None:
    """The results page, rewritten after each preset (a long run that is cut short keeps what it measured)."""
    pending = "" if done else "\n(measuring: the presets not listed yet are still to come)\n"
    body = f"""# Internals

The cost of the `internals` events (gradient norms, update ratios and the model's own arrays on its fixed
probe, trainers/internals.py) at each preset's CPU profile and default `train.internals_interval`: the time
one probe adds, as a share of the steps between two probes (goal ≤ 2%). Measured by
`scripts/bench_internals.py` (plain steps: median of {a.steps}; probes: median of {a.probes}, interleaved with
them, each timed from the weight copy before the update to the event written).

Machine: {machine}.

{table(rows, failed)}
{pending}"""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(body)


def main(argv=None):
    from trainers.config import preset_names

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", nargs="*", default=preset_names())
    ap.add_argument("--steps", type=int, default=8, help="plain steps timed per preset")
    ap.add_argument("--probes", type=int, default=4, help="probes timed per preset")
    ap.add_argument("--out", default=str(DEFAULT_OUT))
    a = ap.parse_args(argv)
    machine, out = machine_line(), Path(a.out)
    rows, failed = [], {}
    for preset in a.presets:
        with tempfile.TemporaryDirectory() as tmp:
            try:
                r = measure(preset, a.steps, a.probes, Path(tmp))
            except Exception as e:  # noqa: BLE001 — one preset that cannot build here is a row, not the end
                failed[preset] = f"{type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}"
                print(f"{preset}: {failed[preset]}", flush=True)
            else:
                rows.append(r)
                print(f"{preset}: step {r['step_ms']:.1f} ms, probe {r['probe_ms']:.1f} ms, every {r['interval']} "
                      f"steps: {100 * r['share']:.2f}%", flush=True)
        write(out, a, machine, rows, failed, done=len(rows) + len(failed) == len(a.presets))
    print(f"wrote {out}")
    return 0 if rows and all(r["share"] <= GOAL for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
