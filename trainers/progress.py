"""Headless progress: one line per logged step, plus eval results, samples and the end of the run."""
from __future__ import annotations

from common.fmt import fmt_duration, fmt_rate


class Progress:
    def __init__(self, out):
        self.out = out
        self.unit = "tok"
        self.max_steps = None
        self.first = None  # (time, step) of the first logged step, for the ETA

    def __call__(self, ev: dict):
        kind = ev["type"]
        if kind == "run_start":
            self.unit = "tok" if ev.get("unit") == "tokens" else "it"
            self.max_steps = ev.get("max_steps")
            resumed = f", resumed from step {ev['resumed_from']}" if ev.get("resumed_from") is not None else ""
            self.p(f"{ev['preset']} ({ev['arch']}, {ev['n_params'] / 1e6:.2f}M params) on {ev['device']}, "
                   f"{ev['profile']} profile{resumed}")
        elif kind == "step":
            step = ev["step"]
            if self.first is None:
                self.first = (ev["time"], step)
            eta = None
            t0, s0 = self.first
            if self.max_steps and step > s0:
                eta = (ev["time"] - t0) / (step - s0) * (self.max_steps - step)
            self.p(f"step {step:>6}/{self.max_steps} | loss {ev['loss']:.4f} | lr {ev['lr']:.2e} | "
                   f"{fmt_rate(ev.get('throughput'))} {self.unit}/s | ETA {fmt_duration(eta)}")
        elif kind == "eval":
            metrics = " ".join(f"{k} {v:.4g}" for k, v in (ev.get("metrics") or {}).items()
                               if isinstance(v, (int, float)) and not isinstance(v, bool))
            self.p(f"eval @ {ev['step']}: val loss {ev['val_loss']:.4f} {metrics}".rstrip())
        elif kind == "sample" and ev.get("kind") == "text":
            text = ev.get("text", "").strip("\n")
            lines = text.splitlines()[:6]
            self.p(f"sample @ {ev['step']}:\n" + "\n".join("  | " + ln for ln in lines))
        elif kind == "sample":
            self.p(f"sample @ {ev['step']}: {ev.get('kind')} ({ev.get('sampler', '')})")
        elif kind == "checkpoint":
            self.p(f"checkpoint @ {ev['step']}: {ev['path']}")
        elif kind == "log" and ev.get("level") in ("warning", "error"):
            self.p(f"{ev['level']}: {ev['message']}")
        elif kind == "run_end":
            m = ev.get("metrics") or {}
            best = m.get("best_val_loss")
            self.p(f"run {ev['status']} at step {ev['step']}: best val loss "
                   f"{best if best is None else format(best, '.4f')}, wall {fmt_duration(m.get('wall_time'))}")
            if ev.get("error"):
                self.p(ev["error"].rstrip())

    def p(self, s: str):
        try:
            print(s, file=self.out, flush=True)
        except (OSError, ValueError):
            pass
