"""What watching costs: a run watched by the real TUI vs the same run headless, and the cost of the memory
probes and the system sampler at their default intervals.

    python scripts/bench_overhead.py [--preset nanogpt] [--steps 150] [--repeats 4] [--interleaved-steps 2000]
                                     [--window 5] [--set K=V ...] [--out benchmarks/results/speed.md]

1. Watched vs headless (goal: watched tokens/s >= 0.98 x headless).
   Interleaved (the measurement): one run launched by `cockpit PRESET` (the real Textual app in a 160x48
   pseudo-terminal whose output this script drains like a terminal emulator) whose UI process is frozen
   (SIGSTOP) and thawed (SIGCONT) every --window seconds, so the same trainer alternates between watched and
   unwatched; the time between step events is compared between the two kinds of window (intervals holding
   evals/samples/checkpoints/probes, or the catch-up just after a thaw, left out).
   Separate runs (--repeats pairs): `cockpit train PRESET --headless` and `cockpit PRESET`, alternating,
   steady-state tokens/s of each (bench_speed.steady_throughput), ratio of the means. On a shared VM whose
   speed drifts by ~15% in phases of tens of seconds this is mostly noise, and is kept to show it.
2. Probes and sampler (goal: <= 2% of step time each, at the preset's memory_interval and at
   train.system_interval's default 2 s).
   Probe: one headless run with a step event per step and a probe every PROBE_EVERY steps. A probed step's
   extra time is its duration minus the mean of its two neighbours (which cancels the drift of a shared
   machine's load), median over the probes; at the default interval that costs extra / (interval x step).
   Sampler: the CPU time of one SystemSampler.sample() (median of 50, timed directly) over the interval;
   and end to end, alternating headless runs with the sampler at SAMPLER_FAST s (20x the default rate) and
   effectively off (3600 s: one sample at start), the step-time difference scaled by SAMPLER_FAST / 2 s.
"""
from __future__ import annotations

import argparse
import bisect
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_speed import DEFAULT_OUT, ROOT, machine_line, steady_throughput, write_section  # noqa: E402
from pty_terminal import Terminal, cpu_seconds  # noqa: E402

PROBE_EVERY = 5
SAMPLER_FAST = 0.1


def read_log(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def wait_for(cond, timeout: float, alive=lambda: True) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if cond():
            return True
        if not alive():
            return False
        time.sleep(0.1)
    return False


def wait_for_end(log_glob, timeout: float, alive=lambda: True) -> Path:
    deadline = time.time() + timeout
    while time.time() < deadline:
        for log in log_glob():
            if any(e["type"] == "run_end" for e in read_log(log)):
                return log
        if not alive():
            raise RuntimeError("the cockpit exited before the run ended")
        time.sleep(0.2)
    raise TimeoutError("the run did not end in time")


def headless(preset: str, overrides: list[str], log: Path, timeout: float) -> list[dict]:
    r = subprocess.run([sys.executable, "-m", "cockpit", "train", preset, "--headless", *overrides,
                        "--log", str(log)], cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        raise RuntimeError(f"headless run failed ({r.returncode}): {r.stderr.strip()[-500:]}")
    return read_log(log)


def watched(preset: str, overrides: list[str], runs_dir: Path, timeout: float,
            tui_cpu: list | None = None) -> list[dict]:
    """The real app: `cockpit PRESET k=v ...` in a pty; quit with ctrl+q once the run has ended.
    Appends (the TUI's CPU seconds, wall seconds) from the first step event to run_end to `tui_cpu`."""
    runs_dir.mkdir(parents=True, exist_ok=True)
    term = Terminal([sys.executable, "-m", "cockpit", preset, *overrides], cwd=ROOT,
                    env={"COCKPIT_RUNS": str(runs_dir)})
    try:
        logs = lambda: sorted(runs_dir.glob("*/events.jsonl"))  # noqa: E731
        first = wait_for(lambda: any('"type":"step"' in p.read_text() for p in logs()), timeout,
                         alive=lambda: not term.closed.is_set())
        c0, t0 = cpu_seconds(term.pid), time.perf_counter()
        log = wait_for_end(logs, timeout, alive=lambda: not term.closed.is_set())
        c1, t1 = cpu_seconds(term.pid), time.perf_counter()
        events = read_log(log)
        pid = next(e["pid"] for e in events if e["type"] == "run_start")
        deadline = time.time() + 60
        while _running(pid) and time.time() < deadline:  # the trainer writes run_end, then exits
            time.sleep(0.05)
        if tui_cpu is not None and first:
            tui_cpu.append((c1 - c0, t1 - t0))
        for _ in range(5):  # ctrl+q; the app quits without asking once it has seen the trainer exit (a tick)
            time.sleep(0.5)
            term.send(b"\x11")
            if term.wait(5) is not None:
                return events
        raise RuntimeError("the cockpit did not quit on ctrl+q")
    finally:
        term.kill()


def watched_interleaved(preset: str, overrides: list[str], runs_dir: Path, timeout: float,
                        window: float = 3.0) -> tuple[list[dict], list[tuple[float, bool, float]]]:
    """One run launched by the real app, whose UI is frozen (SIGSTOP) and thawed (SIGCONT) every `window`
    seconds: the same trainer alternates between being watched and running unwatched, so the slow drift of
    a shared machine's speed (phases of tens of seconds here) cancels between neighbouring windows.
    Returns the log's events and the toggles [(time.time(), watched, the UI's CPU seconds so far)]."""
    runs_dir.mkdir(parents=True, exist_ok=True)
    term = Terminal([sys.executable, "-m", "cockpit", preset, *overrides], cwd=ROOT,
                    env={"COCKPIT_RUNS": str(runs_dir)})
    logs = lambda: sorted(runs_dir.glob("*/events.jsonl"))  # noqa: E731
    toggles = []
    try:
        if not wait_for(lambda: any('"type":"step"' in p.read_text() for p in logs()), timeout,
                        alive=lambda: not term.closed.is_set()):
            raise RuntimeError("the run did not start")
        log = logs()[0]
        watching, deadline = True, time.time() + timeout
        toggles.append((time.time(), True, cpu_seconds(term.pid)))
        while time.time() < deadline:
            time.sleep(window)
            if '"type":"run_end"' in log.read_text():
                break
            cpu = cpu_seconds(term.pid)
            watching = not watching
            os.kill(term.pid, signal.SIGCONT if watching else signal.SIGSTOP)
            toggles.append((time.time(), watching, cpu))
        os.kill(term.pid, signal.SIGCONT)
        toggles.append((time.time(), None, cpu_seconds(term.pid)))
        return read_log(wait_for_end(logs, 120)), toggles
    finally:  # the run has ended; the UI's part is measured, so it is simply killed
        try:
            os.kill(term.pid, signal.SIGCONT)
        except ProcessLookupError:
            pass
        term.kill()


SETTLE_S = 1.0
INTERRUPTS = ("eval", "sample", "checkpoint", "memory")  # trainer work that is not a training step


def interleaved_ratio(events: list[dict], toggles: list[tuple[float, bool, float]]) -> dict:
    """Watched vs unwatched speed from one interleaved run. The time between consecutive step events (the
    same number of steps and tokens each) is assigned to the window it lies in (one straddling a toggle, or
    holding an eval, sample, checkpoint or memory probe, is left out); each watched window is paired with
    the unwatched one after it; the ratio of a pair is mean unwatched interval / mean watched interval."""
    steps = [e for e in events if e["type"] == "step"]
    busy = sorted(e["time"] for e in events if e["type"] in INTERRUPTS)
    # a thawed UI first catches up on the window it missed (one fold and a full redraw it would otherwise
    # have spread out): intervals starting within SETTLE_S of a thaw are left out
    windows = [(t0 + (SETTLE_S if w else 0.0), t1, w)
               for (t0, w, _), (t1, _, _) in zip(toggles, toggles[1:]) if w is not None]
    per_window = [[] for _ in windows]
    gap = statistics.mode(b["step"] - a["step"] for a, b in zip(steps, steps[1:]))  # train.log_interval
    for a, b in zip(steps, steps[1:]):
        if b["step"] - a["step"] != gap:
            continue
        i = bisect.bisect_right(busy, a["time"])
        if i < len(busy) and busy[i] <= b["time"]:
            continue
        for k, (t0, t1, _) in enumerate(windows):
            if t0 <= a["time"] and b["time"] < t1:
                per_window[k].append(b["time"] - a["time"])
                break
    pairs = []
    for k in range(0, len(windows) - 1):
        if windows[k][2] and not windows[k + 1][2] and per_window[k] and per_window[k + 1]:
            pairs.append(statistics.mean(per_window[k + 1]) / statistics.mean(per_window[k]))
    on = [d for k, w in enumerate(windows) if w[2] for d in per_window[k]]
    off = [d for k, w in enumerate(windows) if not w[2] for d in per_window[k]]
    cpu_on = sum(c1 - c0 for (t0, w, c0), (t1, _, c1) in zip(toggles, toggles[1:]) if w)
    wall_on = sum(t1 - t0 for (t0, w, _), (t1, _, _) in zip(toggles, toggles[1:]) if w)
    if not pairs:
        raise RuntimeError("no watched/unwatched window pair with clean step intervals: run longer")
    q = statistics.quantiles(pairs, n=4) if len(pairs) >= 2 else [pairs[0]] * 3
    return {"pairs": len(pairs), "median": statistics.median(pairs), "q1": q[0], "q3": q[2],
            "mean": statistics.mean(pairs), "n_on": len(on), "n_off": len(off),
            "on_ms": 1000 * statistics.mean(on), "off_ms": 1000 * statistics.mean(off),
            "overall": statistics.mean(off) / statistics.mean(on), "tui_cpu": cpu_on / wall_on}


def _running(pid: int) -> bool:
    """True while pid runs (a zombie waiting for its parent to reap it counts as exited)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def step_durations(events: list[dict]) -> dict[int, float]:
    steps = [e for e in events if e["type"] == "step"]
    return {b["step"]: b["time"] - a["time"] for a, b in zip(steps, steps[1:]) if b["step"] == a["step"] + 1}


def probe_cost(events: list[dict], every: int, default_interval: int) -> dict:
    """A probed step's extra time over its neighbours (median), and its share of step time when probing
    every `default_interval` steps. The probe watches the step after each step % every == 0."""
    dur = step_durations(events)
    probed = [s for s in dur if s % every == 1 and s > 1 and s - 1 in dur and s + 1 in dur]
    plain = [d for s, d in dur.items() if s % every != 1]
    base = statistics.median(plain)
    extra = statistics.median([dur[s] - (dur[s - 1] + dur[s + 1]) / 2 for s in probed])
    return {"plain_step_ms": 1000 * base, "n_plain": len(plain), "probe_extra_ms": 1000 * extra,
            "n_probed": len(probed), "probe_fraction": extra / (default_interval * base) if default_interval else 0.0}


def sample_cpu_cost(n: int = 50) -> float:
    from trainers.system import SystemSampler

    s = SystemSampler(lambda *a, **k: None, 2.0)
    s.sample()
    times = []
    for _ in range(n):
        t = time.perf_counter()
        s.sample()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="nanogpt")
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=4, help="pairs of separate headless and watched runs")
    ap.add_argument("--interleaved-steps", type=int, default=2000,
                    help="length of the interleaved run (0: skip it)")
    ap.add_argument("--window", type=float, default=3.0, help="seconds the UI runs, then is frozen, in turn")
    ap.add_argument("--set", action="append", default=[], metavar="K=V", help="extra override for every run")
    ap.add_argument("--timeout", type=float, default=1800)
    ap.add_argument("--skip-tui", action="store_true", help="only the probe and sampler costs")
    ap.add_argument("--skip-probes", action="store_true", help="only watched vs headless")
    ap.add_argument("--out", default=str(DEFAULT_OUT))
    a = ap.parse_args(argv)
    from trainers import config

    cfg = config.load(a.preset, a.set, profile="cpu", has_cuda=False)
    default_mi = cfg["train"]["memory_interval"]
    default_si = config.COMMON["train.system_interval"][1]
    header = machine_line()
    out_dir = ROOT / "runs" / f"bench-overhead-{time.strftime('%Y%m%d-%H%M%S')}"
    common = [f"train.max_steps={a.steps}", *a.set]
    body = [f"## Cockpit overhead ({a.preset}, CPU profile)", "",
            f"Measured by `python scripts/bench_overhead.py --preset {a.preset} --steps {a.steps} --repeats "
            f"{a.repeats} --interleaved-steps {a.interleaved_steps}{''.join(' --set ' + x for x in a.set)}` on "
            f"{header}.", ""]

    if not a.skip_tui and a.interleaved_steps:
        # a step event per step: intervals of one step, many per window (and 10x the events for the UI to
        # fold than the preset's log_interval gives it: if anything, a harder case)
        events, toggles = watched_interleaved(a.preset, [f"train.max_steps={a.interleaved_steps}",
                                                         "train.log_interval=1", *a.set],
                                              out_dir / "interleaved", a.timeout, a.window)
        r = interleaved_ratio(events, toggles)
        print(json.dumps(r), flush=True)
        body += [f"Watched vs unwatched within one run: `cockpit {a.preset}` (the real app in a 160x48 "
                 f"pseudo-terminal) launches the trainer as a user would; every {a.window:g} s the app is frozen "
                 "(SIGSTOP) or thawed (SIGCONT), so the same trainer alternates between being watched and running "
                 "with no UI, and the machine's slow drift cancels between neighbouring windows. Compared: the "
                 "time between step events (`train.log_interval=1`: one step and the same tokens each) in watched "
                 "and unwatched windows, leaving "
                 f"out those holding an eval, sample, checkpoint or memory probe and the first {SETTLE_S:g} s after "
                 "a thaw (the catch-up of the frozen window). A thaw is a SIGCONT the app did not ask for: it "
                 "leaves and re-enters the terminal's application mode with a full repaint (cockpit/driver.py), "
                 "which the UI CPU column includes.", "",
                 "| watched/unwatched pairs | ratio per pair: median (quartiles) | all watched vs all unwatched "
                 "intervals | UI process CPU while watching |", "| --- | --- | --- | --- |",
                 f"| {r['pairs']} | {r['median']:.3f} ({r['q1']:.3f}-{r['q3']:.3f}) | **{r['overall']:.3f}** "
                 f"({r['on_ms']:.1f} vs {r['off_ms']:.1f} ms per step; {r['n_on']} and "
                 f"{r['n_off']} intervals) | {100 * r['tui_cpu']:.1f}% of one core |", "",
                 f"Goal >= 0.98: {'met' if r['overall'] >= 0.98 else 'NOT met'} on the pooled intervals.", ""]

    if not a.skip_tui and a.repeats:
        rows, ratios = [], []
        hs, ws, tui = [], [], []
        for i in range(a.repeats):
            h = steady_throughput(headless(a.preset, common, out_dir / f"headless-{i}" / "events.jsonl",
                                           a.timeout), a.warmup)["throughput"]
            w = steady_throughput(watched(a.preset, common, out_dir / f"watched-{i}", a.timeout, tui),
                                  a.warmup)["throughput"]
            hs.append(h)
            ws.append(w)
            share = tui[-1][0] / tui[-1][1]
            print(f"repeat {i + 1}: headless {h:,.0f} tok/s, watched {w:,.0f} tok/s, ratio {w / h:.3f}, "
                  f"TUI CPU {100 * share:.1f}% of a core", flush=True)
            rows.append(f"| {i + 1} | {h:,.0f} | {w:,.0f} | {w / h:.3f} | {100 * share:.1f}% |")
            ratios.append(w / h)
        ratio = statistics.mean(ws) / statistics.mean(hs)
        body += ["Separate runs: watched by the real TUI (`cockpit PRESET` in a 160x48 pseudo-terminal) vs headless "
                 "(`cockpit train PRESET --headless`), same config, alternating. On a shared machine whose speed "
                 "drifts in phases of tens of seconds, a run's speed varies by more than the UI costs, so this "
                 "table shows that noise; the interleaved figure above is the measurement:", "",
                 "| repeat | headless tokens/s | watched tokens/s | watched / headless | TUI process CPU "
                 "(share of one core, first step to run_end) |", "| --- | --- | --- | --- | --- |",
                 *rows, f"| mean | {statistics.mean(hs):,.0f} | {statistics.mean(ws):,.0f} | {ratio:.3f} "
                 f"(run-to-run noise; see above) | "
                 f"{100 * sum(c for c, _ in tui) / sum(t for _, t in tui):.1f}% |", ""]

    if a.skip_probes:
        write_section(a.out, "bench_overhead", "\n".join(body))
        print(f"wrote {a.out}; logs in {out_dir}")
        return 0
    quiet = ["train.log_interval=1", f"train.eval_interval={a.steps + 1}", "train.sample_interval=0",
             "train.checkpoint_interval=0"]
    ev = headless(a.preset, [*common, *quiet, f"train.memory_interval={PROBE_EVERY}"],
                  out_dir / "probes" / "events.jsonl", a.timeout)
    c = probe_cost(ev, PROBE_EVERY, default_mi)
    per_sample = sample_cpu_cost()
    fast, off = [], []
    for i in range(a.repeats):
        for interval, into in ((SAMPLER_FAST, fast), (3600, off)):
            log = out_dir / f"sampler-{interval:g}-{i}" / "events.jsonl"
            ev = headless(a.preset, [*common, *quiet, "train.memory_interval=0",
                                     f"train.system_interval={interval}"], log, a.timeout)
            into.append(steady_throughput(ev, a.warmup)["step_ms"])
    slow_down = statistics.mean(fast) / statistics.mean(off) - 1
    scaled = slow_down * SAMPLER_FAST / default_si
    print(json.dumps({**c, "sample_cpu_ms": 1000 * per_sample, "step_ms_sampler_fast": fast,
                      "step_ms_sampler_off": off, "sampler_scaled": scaled}), flush=True)

    def share(x):
        return f"{100 * x:.3f}% ({'met' if x <= 0.02 else 'NOT met'})"

    body += [f"Memory probes and the system sampler (headless runs, one step event per step; median plain "
             f"step {c['plain_step_ms']:.1f} ms):", "",
             "| what | measured | at the default interval | share of step time (goal <= 2%) |",
             "| --- | --- | --- | --- |",
             f"| memory probe (saved-tensor hooks + memory event) | {c['probe_extra_ms']:+.1f} ms per probed step "
             f"over its neighbours (median of {c['n_probed']}, a probe every {PROBE_EVERY} steps) | "
             f"every {default_mi} steps | {share(c['probe_fraction'])} |",
             f"| system sampler: CPU time of one sample() (timed directly) | {1000 * per_sample:.2f} ms | "
             f"every {default_si:g} s | {share(per_sample / default_si)} |",
             f"| system sampler end to end: step time at {SAMPLER_FAST:g} s vs off ({a.repeats} alternating "
             f"pairs; noisy on a shared machine) | {statistics.mean(fast):.1f} vs {statistics.mean(off):.1f} ms "
             f"({100 * slow_down:+.1f}% at {default_si / SAMPLER_FAST:.0f}x the default rate) | every "
             f"{default_si:g} s | {100 * scaled:+.3f}% |", ""]
    write_section(a.out, "bench_overhead", "\n".join(body))
    print(f"wrote {a.out}; logs in {out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
