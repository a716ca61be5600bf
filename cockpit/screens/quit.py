"""`q` while a run is alive: stop it (checkpoint, then end) or leave it running headless."""
from __future__ import annotations

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Static


class QuitScreen(ModalScreen):
    """Dismisses with "stop", "leave" or None (cancel)."""

    BINDINGS = [
        Binding("s,x", "choose('stop')", "Stop the run"),
        Binding("l,h", "choose('leave')", "Leave it running"),
        Binding("escape,c", "choose(None)", "Cancel"),
    ]

    def __init__(self, log_path: str, launched: bool = True):
        super().__init__()
        self.log_path = log_path
        self.launched = launched

    def compose(self) -> ComposeResult:
        with Vertical(id="quit-box") as box:
            box.border_title = "the run is still going"
            yield Static(Text.assemble(
                "s  stop it: the trainer writes a checkpoint, then ends (run_end stopped)\n",
                "l  leave it running headless: it keeps training and writing its log; reattach with\n",
                ("   cockpit watch " + self.log_path, "bold cyan"), "\n",
                "esc  stay here"))
            with Horizontal(id="quit-buttons"):
                yield Button("Stop the run", id="stop", variant="error")
                yield Button("Leave it running", id="leave", variant="primary")
                yield Button("Cancel", id="cancel")

    @on(Button.Pressed)
    def pressed(self, event: Button.Pressed):
        self.dismiss({"stop": "stop", "leave": "leave"}.get(event.button.id))

    def action_choose(self, choice):
        self.dismiss(choice)
