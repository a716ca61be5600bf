"""The log pane: the trainer's `log` events (data and configuration notes, "paused at step 129", warnings,
checkpoint paths) and the lines it printed outside the protocol (trainer.out: warnings, tracebacks), newest
at the bottom, long lines wrapped. Before the first step it is what tells the user what the trainer is doing.
"""
from __future__ import annotations

import textwrap

from rich.text import Text
from textual.widget import Widget

from cockpit.widgets.run_pane import set_if_changed

LEVEL_STYLE = {"warning": "yellow", "error": "bold red", "output": "dim"}
LEVEL_MARK = {"warning": "! ", "error": "✗ ", "output": "│ "}


def log_lines(s) -> list[tuple[str, str]]:
    """(level, text) of the log pane, oldest first: log events, printed output and the checkpoints."""
    return list(s.logs)


def wrapped_tail(entries: list[tuple[str, str]], width: int, height: int) -> list[tuple[str, str]]:
    """The last `height` display lines of the entries wrapped to `width` (a continuation indented)."""
    out: list[tuple[str, str]] = []
    for level, message in reversed(entries):
        mark = LEVEL_MARK.get(level, "")
        lines = textwrap.wrap(mark + message, width=max(8, width), subsequent_indent="  ",
                              break_long_words=True, drop_whitespace=True) or [mark]
        out[:0] = [(level, line) for line in lines]
        if len(out) >= height:
            break
    return out[-height:] if height > 0 else []


class LogPane(Widget):
    DEFAULT_CSS = """
    LogPane { height: 1fr; width: 1fr; }
    """
    pane, heavy = "log", False

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.state = None

    @staticmethod
    def signature(s, note=None) -> tuple:
        return (s.counts.get("log", 0), s.counts.get("output", 0), s.counts.get("checkpoint", 0), s.status,
                s.run_id is None)

    def update_state(self, s, note: str | None = None):
        self.state = s
        n = sum(s.counts.get(k, 0) for k in ("log", "output", "checkpoint"))
        set_if_changed(self, "border_subtitle", f"{n} line{'s' if n != 1 else ''}" if n else "")
        self.refresh()

    def render(self):
        s = self.state
        if s is None:
            return Text("starting the trainer…", style="dim")
        entries = log_lines(s)
        if not entries:
            waiting = "the trainer is starting: building the model and loading the data…" if s.run_id is None \
                else "no log lines yet"
            return Text(waiting, style="dim")
        out = Text(no_wrap=True, overflow="crop")
        lines = wrapped_tail(entries, self.size.width, self.size.height)
        for i, (level, line) in enumerate(lines):
            out.append(line, style=LEVEL_STYLE.get(level, ""))
            if i < len(lines) - 1:
                out.append("\n")
        return out
