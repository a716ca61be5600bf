"""The status line: step/max, loss, val, lr, tokens/s, elapsed, ETA and the run state, in one row."""
from __future__ import annotations

import math

from rich.text import Text
from textual.widget import Widget

from common.fmt import fmt_duration, fmt_loss, fmt_rate

STATE_STYLE = {"running": "green", "paused": "yellow", "completed": "bold green", "stopped": "yellow",
               "failed": "bold red", "killed": "red", "waiting": "dim", "stopping": "yellow",
               "starting": "dim"}


def status_fields(s, note: str | None = None) -> list[tuple[str, str]]:
    """(label, value) pairs of the status line: step/max, loss, lr, rate, elapsed, ETA, state."""
    unit = "tok/s" if s.unit == "tokens" else "it/s"
    lr = f"{s.lr:.2e}" if isinstance(s.lr, float) and math.isfinite(s.lr) else "-"
    state = note or s.status
    if s.exit_code not in (None, 0) and s.status in ("failed", "killed", "stopped"):
        state += f" (exit {s.exit_code})"
    fields = [
        ("", state),
        ("step", f"{s.step}/{s.max_steps or '?'}"),
        ("loss", fmt_loss(s.loss)),
        ("val", fmt_loss(s.val.values[-1]) if len(s.val) else "-"),
        ("lr", lr),
        (unit, fmt_rate(s.throughput)),
        ("elapsed", fmt_duration(s.elapsed if len(s.train) else None)),
        ("ETA", fmt_duration(s.eta())),
    ]
    ignored = s.ignored()
    if ignored:  # what the log held that could not be shown: counted, never fatal
        fields.append(("ignored", f"{ignored} bad line{'s' if ignored > 1 else ''}"))
    return fields


class StatusLine(Widget):
    DEFAULT_CSS = """
    StatusLine { height: 1; width: 1fr; text-wrap: nowrap; text-overflow: ellipsis; }
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.state = None
        self.note: str | None = None   # overrides the state word, e.g. "stopping…"

    pane, heavy = "status", False

    @staticmethod
    def signature(s, note=None) -> tuple:
        return tuple(status_fields(s, note))   # the state word is among the fields

    def update_state(self, state, note: str | None = None):
        self.state, self.note = state, note
        self.refresh()

    def render(self):
        if self.state is None:
            return Text("loading…", style="dim")
        out = Text(no_wrap=True, overflow="ellipsis")
        fields = status_fields(self.state, self.note)
        for i, (label, value) in enumerate(fields):
            if label:
                out.append(f"{label} ", style="dim")
                out.append(value, style="bold" if label in ("step", "loss") else "")
                out.append("  ")
            else:
                word = self.note or self.state.status
                out.append(f"● {value}", style=STATE_STYLE.get(word.split()[0].rstrip("…"), ""))
                out.append("  ")
        return out
