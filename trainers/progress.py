"""Headless progress (`cockpit train PRESET --headless`): a line per logged step, eval results, samples,
checkpoints, warnings and the end of the run. The events are folded by the same reducer as the cockpit's
(common/state.py), so the ETA, the best val loss and the rates here are the numbers the cockpit shows."""
from __future__ import annotations

from common import events as E
from common.fmt import fmt_count, fmt_duration, fmt_loss, fmt_rate
from common.state import RunState, number


class Progress:
    def __init__(self, out):
        self.out = out
        self.state = RunState()

    def __call__(self, ev: E.Event):
        if isinstance(ev, E.System):
            return  # from the sampler's thread: nothing to print, and the state belongs to the loop's thread
        s = self.state
        s.apply(ev)
        unit = "tok" if s.unit == "tokens" else "it"
        if isinstance(ev, E.RunStart):
            resumed = f", resumed from step {ev.resumed_from}" if ev.resumed_from is not None else ""
            self.p(f"{s.preset} ({s.arch}, {fmt_count(s.n_params)} params) on {s.device}, "
                   f"{s.profile} profile{resumed}")
        elif isinstance(ev, E.Step):
            lr = f"{s.lr:.2e}" if s.lr is not None else "-"
            self.p(f"step {s.step:>6}/{s.max_steps} | loss {fmt_loss(s.loss)} | lr {lr} | "
                   f"{fmt_rate(s.throughput)} {unit}/s | ETA {fmt_duration(s.eta())}")
        elif isinstance(ev, E.Eval):
            metrics = " ".join(f"{k} {v:.4g}" for k, v in ev.metrics.items() if number(v) is not None)
            self.p(f"eval @ {ev.step}: val loss {fmt_loss(ev.val_loss)} {metrics}".rstrip())
        elif isinstance(ev, E.Sample) and ev.kind == "text":
            lines = ev.text.strip("\n").splitlines()[:6]
            self.p(f"sample @ {ev.step}:\n" + "\n".join("  | " + ln for ln in lines))
        elif isinstance(ev, E.Sample):
            self.p(f"sample @ {ev.step}: {ev.kind} ({ev.sampler or ''})")
        elif isinstance(ev, E.Checkpoint):
            self.p(f"checkpoint @ {ev.step}: {ev.path}")
        elif isinstance(ev, E.Log) and ev.level in ("warning", "error"):
            self.p(f"{ev.level}: {ev.message}")
        elif isinstance(ev, E.RunEnd):
            self.p(f"run {ev.status} at step {s.step}: best val loss {fmt_loss(s.end_metric('best_val_loss'))}, "
                   f"wall {fmt_duration(s.wall_time())}")
            if ev.error:
                self.p(ev.error.rstrip())

    def p(self, s: str):
        try:
            print(s, file=self.out, flush=True)
        except (OSError, ValueError):
            pass
