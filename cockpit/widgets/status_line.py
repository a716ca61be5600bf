"""The status line: the run state, step/max with a progress bar, loss, val, lr, tokens/s, elapsed and ETA,
in one row. When the row is narrow the least needed fields go first (lr, elapsed, val, rate, the bar), so
the state, the step, the percentage, the loss and the ETA always show."""
from __future__ import annotations

import math

from rich.text import Text
from textual.widget import Widget

from common.fmt import fmt_duration, fmt_loss, fmt_rate

STATE_STYLE = {"running": "green", "paused": "yellow", "completed": "bold green", "stopped": "yellow",
               "failed": "bold red", "killed": "red", "waiting": "dim", "stopping": "yellow",
               "starting": "dim"}


# fields dropped first when the row is too narrow, in this order (the state, step, %, loss and ETA stay)
DROP_ORDER = ("lr", "elapsed", "val", "ignored", "tok/s", "it/s", "bar")
BAR_W = 12


def progress_bar(fraction: float, width: int = BAR_W) -> str:
    """`━━━━━╸──────` : a bar of `width` cells (half cells drawn), the rest a thin line."""
    halves = round(max(0.0, min(1.0, fraction)) * width * 2)
    full, half = divmod(halves, 2)
    return ("━" * full + ("╸" if half else "")).ljust(width, "─")


def status_fields(s, note: str | None = None) -> list[tuple[str, str]]:
    """(label, value) pairs of the status line: state, step/max, progress, loss, val, lr, rate, elapsed, ETA."""
    unit = "tok/s" if s.unit == "tokens" else "it/s"
    lr = f"{s.lr:.2e}" if isinstance(s.lr, float) and math.isfinite(s.lr) else "-"
    state = note or s.status
    if s.exit_code not in (None, 0) and s.status in ("failed", "killed", "stopped"):
        state += f" (exit {s.exit_code})"
    fields = [
        ("", state),
        ("step", f"{s.step}/{s.max_steps or '?'}"),
    ]
    done = s.progress()
    if done is not None:
        fields += [("bar", progress_bar(done)), ("%", f"{done * 100:.0f}%")]
    fields += [
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
        fields = status_fields(self.state, self.note)
        width = self.content_size.width
        out = self._line(fields)
        if width and out.cell_len > width:  # an ended run's ETA (--:--) goes before anything else
            fields = [f for f in fields if f != ("ETA", "--:--")]
            out = self._line(fields)
        for drop in DROP_ORDER:
            if not width or out.cell_len <= width:
                break
            fields = [f for f in fields if f[0] != drop]
            out = self._line(fields)
        return out

    def _line(self, fields) -> Text:
        out = Text(no_wrap=True, overflow="ellipsis")
        for label, value in fields:
            if not label:
                word = self.note or self.state.status
                out.append(f"● {value}", style=STATE_STYLE.get(word.split()[0].rstrip("…"), ""))
            elif label == "bar":
                out.append(value, style=STATE_STYLE.get(self.state.status, ""))
                out.append(" ")
                continue
            elif label == "%":
                out.append(value, style="bold")
            else:
                out.append(f"{label} ", style="dim")
                out.append(value, style="bold" if label in ("step", "loss") else "")
            out.append("  ")
        out.rstrip()
        return out
