"""Replay and UI start-up: `cockpit --replay` of a 1,000,000-event log (time, peak RSS) and the time from
launching the real UI to its first frame.

    python scripts/bench_replay.py [--events 1000000] [--repeats 2] [--regen] [--out benchmarks/results/speed.md]

The log is generated once (runs/bench-replay/events-<N>.jsonl, reused until --regen) with the mix of a
real run at 2000 steps a minute: a `step` event per step, a `system` event every 10 steps, an `eval`
every 250, a `sample` (200 characters) and a `memory` table (12 layers) every 500, a checkpoint every 1000,
and run_start/run_end. Replay is `python -m cockpit --replay LOG > /dev/null`, timed from launch to exit;
its peak RSS comes from the kernel's rusage of that child (wait4). The UI is started in a 160x48
pseudo-terminal (pty_terminal.Terminal) and timed until its first frame shows: the picker (`cockpit`, until
its header is drawn, then until the preset table has its rows), and the run screen (`cockpit watch LOG`, until
its footer is drawn, then until the whole log is folded and the run's title shows) on a small finished log
and on the 1,000,000-event log.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pty_terminal import Terminal  # noqa: E402
from bench_speed import DEFAULT_OUT, ROOT, machine_line, write_section  # noqa: E402

PRESET = "bench-replay"
LAYERS = [f"h.{i}" for i in range(10)] + ["wte", "lm_head"]


def generate(path: Path, n_events: int, seed: int = 0) -> Path:
    """A finished run's log with exactly n_events events (see the module docstring for the mix)."""
    rng = random.Random(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    t = 1_795_000_000.0
    cfg = {"name": PRESET, "arch": "gpt", "task": "lm", "model": {"n_layer": 10, "n_head": 4, "n_embd": 128,
           "block_size": 64}, "train": {"batch_size": 32, "max_steps": n_events, "lr": 2e-3}}
    tmp = path.with_suffix(".tmp")
    written = 0
    with open(tmp, "w", encoding="utf-8") as f:
        def emit(type_, **fields):
            nonlocal written
            f.write(json.dumps({"v": 1, "type": type_, "time": round(t, 4), **fields}, separators=(",", ":")) + "\n")
            written += 1

        emit("run_start", run_id=f"{PRESET}-1", preset=PRESET, arch="gpt", task="lm", config=cfg,
             n_params=2_100_000, device="cpu", profile="cpu", pid=1, unit="tokens", max_steps=n_events,
             world_size=1)
        step, loss = 0, 4.3
        while written < n_events - 1:
            step += 1
            t += 0.03
            loss = max(1.2, loss * 0.9995 + rng.gauss(0, 0.01))
            emit("step", step=step, loss=round(loss, 5), lr=2e-3, grad_norm=round(abs(rng.gauss(0.8, 0.2)), 4),
                 tokens=step * 2048, throughput=68000.0 + rng.gauss(0, 500), elapsed=round(step * 0.03, 3),
                 max_steps=n_events)
            extras = []
            if step % 10 == 0:
                extras.append(("system", {"cpu": {"util_pct": 97.0, "rss": 500_000_000, "ram_used": 4_000_000_000,
                                                  "ram_total": 25_000_000_000, "cores": 2}}))
            if step % 250 == 0:
                extras.append(("eval", {"step": step, "val_loss": round(loss + 0.05, 5),
                                        "metrics": {"train_loss": round(loss, 5)}}))
            if step % 500 == 0:
                text = "".join(rng.choice("abcdefghij klmnopqrstuvwxyz\n") for _ in range(200))
                extras.append(("sample", {"step": step, "kind": "text", "text": text, "prompt": "\n"}))
                extras.append(("memory", {"step": step, "layers": [
                    {"name": n, "activation_bytes": 1 << 20, "param_bytes": 1 << 18} for n in LAYERS],
                    "totals": {"params": 8_400_000, "grads": 8_400_000, "optimizer": 16_800_000,
                               "activations": 12 << 20, "peak_allocated": None}, "budget_bytes": 12 << 30}))
            if step % 1000 == 0:
                extras.append(("checkpoint", {"step": step, "path": "ckpt.pt", "reason": "interval"}))
            for type_, fields in extras:
                if written >= n_events - 1:
                    break
                emit(type_, **fields)
        emit("run_end", status="completed", step=step, metrics={"best_val_loss": round(loss, 5),
             "final_val_loss": round(loss, 5), "wall_time": step * 0.03, "unit": "tokens"}, error=None,
             exit_code=0)
    os.replace(tmp, path)
    return path


def replay_once(log: Path) -> tuple[float, int, int]:
    """(seconds, peak RSS bytes, exit code) of `cockpit --replay LOG` with stdout to /dev/null."""
    t0 = time.perf_counter()
    p = subprocess.Popen([sys.executable, "-m", "cockpit", "--replay", str(log)], cwd=ROOT,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t0
    p.returncode = os.waitstatus_to_exitcode(status)
    return wall, usage.ru_maxrss * 1024, p.returncode


def first_frame(argv: list[str], markers: list[bytes], timeout: float, env=None) -> list[float | None]:
    """Seconds from launch until each marker is first drawn (in order), then quit the app (ctrl+q)."""
    term = Terminal(argv, cwd=ROOT, env=env, markers=markers)
    try:
        times = [term.wait_for(m, timeout) for m in markers]
        term.send(b"\x11")
        term.wait(10)
        return times
    finally:
        term.kill()


def median_seen(times) -> float | None:
    """The median of the times a marker was seen; None when it was missed in half the runs or more."""
    times = list(times)
    seen = [t for t in times if t is not None]
    return statistics.median(seen) if len(seen) * 2 > len(times) else None


def small_log(path: Path) -> Path:
    if not path.exists():
        generate(path, 2000, seed=1)
    return path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--regen", action="store_true", help="write the log again even if it exists")
    ap.add_argument("--timeout", type=float, default=600)
    ap.add_argument("--out", default=str(DEFAULT_OUT))
    a = ap.parse_args(argv)
    header = machine_line()
    base = ROOT / "runs" / "bench-replay"
    log = base / f"events-{a.events}.jsonl"
    if a.regen or not log.exists():
        t0 = time.perf_counter()
        generate(log, a.events)
        print(f"generated {log} ({log.stat().st_size / 2**20:.0f} MiB) in {time.perf_counter() - t0:.0f} s")
    n_lines = sum(1 for _ in open(log, "rb"))
    assert n_lines == a.events, f"{log} has {n_lines} events, not {a.events}; run with --regen"

    runs = []
    for i in range(a.repeats):
        wall, rss, rc = replay_once(log)
        if rc != 0:
            raise SystemExit(f"cockpit --replay {log} exited {rc}")
        runs.append((wall, rss))
        print(f"replay {i + 1}: {wall:.2f} s, peak RSS {rss / 2**20:.0f} MiB", flush=True)

    small = small_log(base / "events-2000.jsonl")
    py = [sys.executable, "-m", "cockpit"]
    first_preset = sorted(x.stem for x in (ROOT / "presets").glob("*.yaml"))[0]
    ui: dict[str, list] = {"picker": [], "watch_small": [], "watch_big": []}
    for _ in range(max(1, a.repeats)):  # in turns, so that a slow phase of the machine touches all three
        ui["picker"].append(first_frame(py, [b"pick a preset", first_preset.encode()], a.timeout))
        ui["watch_small"].append(first_frame([*py, "watch", str(small)], [b"Kernels", PRESET.encode()],
                                             a.timeout))
        ui["watch_big"].append(first_frame([*py, "watch", str(log)], [b"Kernels", PRESET.encode()], a.timeout))
        print(json.dumps({k: v[-1] for k, v in ui.items()}), flush=True)
    picker, watch_small, watch_big = ([median_seen(t[i] for t in ui[k]) for i in (0, 1)]
                                      for k in ("picker", "watch_small", "watch_big"))

    def s(x):
        return f"{x:.2f} s" if x is not None else "not seen"

    body = [f"## Replay of a {a.events:,}-event log and UI start-up", "",
            f"Measured by `python scripts/bench_replay.py --events {a.events} --repeats {a.repeats}` on {header}. "
            f"The log ({log.stat().st_size / 2**20:.0f} MiB) has a step event per step plus system, eval, "
            "sample, memory and checkpoint events at a real run's cadence.", "",
            "| `cockpit --replay` | wall time (launch to exit) | peak RSS |", "| --- | --- | --- |",
            *[f"| run {i + 1} | {w:.2f} s | {r / 2**20:.0f} MiB |" for i, (w, r) in enumerate(runs)],
            f"| median | {statistics.median(w for w, _ in runs):.2f} s | "
            f"{statistics.median(r for _, r in runs) / 2**20:.0f} MiB |", "",
            f"| UI (real app, 160x48 pseudo-terminal; median of {max(1, a.repeats)}) | first frame | content drawn |",
            "| --- | --- | --- |",
            f"| `cockpit` (preset picker; content: the preset table's rows) | {s(picker[0])} | {s(picker[1])} |",
            f"| `cockpit watch` a finished 2,000-event log (content: log folded, run title drawn) | "
            f"{s(watch_small[0])} | {s(watch_small[1])} |",
            f"| `cockpit watch` the {a.events:,}-event log | {s(watch_big[0])} | {s(watch_big[1])} |", ""]
    write_section(a.out, "bench_replay", "\n".join(body))
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
