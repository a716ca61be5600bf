"""`g` on the run screen: which metrics the grid shows. Space ticks or unticks, Enter applies, esc cancels;
`a` shows them all. Dismisses with the set of hidden metric keys (None when cancelled)."""
from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import SelectionList, Static


class MetricsChooser(ModalScreen):
    BINDINGS = [Binding("enter", "apply", "Apply", priority=True), Binding("a", "all", "Show all"),
                Binding("escape", "cancel", "Cancel")]

    def __init__(self, available: list[tuple[str, str]], hidden: set[str]):
        super().__init__()
        self.available, self.hidden = list(available), set(hidden)

    def compose(self) -> ComposeResult:
        with Vertical(id="chooser-box") as box:
            box.border_title = "metrics shown"
            box.border_subtitle = "space ticks · enter applies · a all · esc cancels"
            yield SelectionList[str](*[(title, key, key not in self.hidden) for key, title in self.available],
                                     id="chooser-list")
            yield Static("The grid shows the ticked metrics in this order, as many as fit; z enlarges one.",
                         classes="dim")

    def on_mount(self):
        self.query_one(SelectionList).focus()

    def action_apply(self):
        shown = set(self.query_one(SelectionList).selected)
        self.dismiss({key for key, _ in self.available if key not in shown})

    def action_all(self):
        self.query_one(SelectionList).select_all()

    def action_cancel(self):
        self.dismiss(None)
