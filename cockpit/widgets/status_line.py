"""The status line: step/max, loss, val, lr, tokens/s, elapsed, ETA and the run state, in one row."""
from __future__ import annotations

from rich.text import Text
from textual.widget import Widget

from cockpit.tui_logic import STATE_STYLE, status_fields


class StatusLine(Widget):
    DEFAULT_CSS = """
    StatusLine { height: 1; width: 1fr; text-wrap: nowrap; text-overflow: ellipsis; }
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.state = None
        self.note: str | None = None   # overrides the state word, e.g. "stopping…"

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
