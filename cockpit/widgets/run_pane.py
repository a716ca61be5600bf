"""What a pane of the run screen provides. cockpit/screens/run.py lists its panes in PANES and redraws each
the same way: when the pane's signature changes (and, for a heavy pane beside a CPU trainer, when its pace
allows), it calls update_state."""
from __future__ import annotations

from typing import ClassVar, Protocol

from rich.text import Text
from textual.widget import Widget

from cockpit.widgets.render_cost import RenderCost


class RunPane(Protocol):
    pane: ClassVar[str]    # its name in the redraw bookkeeping (cockpit/screens/pacing.py RedrawGate)
    heavy: ClassVar[bool]  # costly to draw: paced while a CPU trainer runs, its redraws timed by RenderCost

    @staticmethod
    def signature(s, note: str | None) -> tuple:
        """What the pane draws from, as a cheap hashable: it redraws only when this changes."""

    def update_state(self, s, note: str | None = None) -> None:
        """Draw the RunState `s` (and the screen's pending-command note)."""


def set_if_changed(widget, attr: str, value) -> None:
    """Set a border title or subtitle: setting one refreshes the widget even when the text is the same.
    `value`: markup (a str), or a rich Text for words from a log, which are never read as markup."""
    if getattr(widget, attr) != (value.markup if isinstance(value, Text) else value):
        setattr(widget, attr, value)


class StatePane(RenderCost, Widget):
    """A heavy pane that draws the whole RunState in render(): update_state keeps the state and asks for a
    redraw (the screen decides how often); render() calls self.rendered() so its cost is measured."""

    DEFAULT_CSS = """
    StatePane { height: 1fr; width: 1fr; text-wrap: nowrap; text-overflow: ellipsis; }
    """
    heavy = True

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.state = None

    def update_state(self, state, note: str | None = None):
        self.state = state
        self.refresh()
