"""`s` on a text-conditioned run: type the caption to sample from. Enter sends it (an empty line asks for
the run's fixed prompts instead), esc cancels; up/down recall the prompts typed before in this cockpit."""
from __future__ import annotations

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, Static

from common.events import PROMPT_MAX, clean_prompt


class PromptScreen(ModalScreen):
    """Dismisses with the cleaned prompt, "" for the fixed prompts, or None (cancelled)."""

    BINDINGS = [Binding("escape", "cancel", "Cancel"), Binding("up", "recall(-1)", "Older", show=False),
                Binding("down", "recall(1)", "Newer", show=False)]

    def __init__(self, history: list[str], examples: list[str] | None = None):
        super().__init__()
        self.history = history            # shared with the run screen: prompts typed before, oldest first
        self.examples = [e for e in (examples or []) if e]
        self.position = len(history)      # len(history): the line being typed

    def compose(self) -> ComposeResult:
        with Vertical(id="prompt-box") as box:
            box.border_title = "sample from a prompt"
            box.border_subtitle = "enter samples · empty: the fixed prompts · ↑↓ earlier · esc cancels"
            yield Static(Text("a caption, e.g. " + (" · ".join(f'"{e}"' for e in self.examples[:3])
                                                     if self.examples else '"the digit seven"'), style="dim"),
                         id="prompt-hint")
            yield Input(value=self.history[-1] if self.history else "", max_length=PROMPT_MAX, id="prompt-input",
                        placeholder="the caption to generate from")

    def on_mount(self):
        self.query_one("#prompt-input", Input).focus()

    @on(Input.Submitted, "#prompt-input")
    def submit(self, event: Input.Submitted):
        prompt = clean_prompt(event.value) or ""
        if prompt and (not self.history or self.history[-1] != prompt):
            self.history.append(prompt)
        self.dismiss(prompt)

    def action_recall(self, delta: int):
        if not self.history:
            return
        self.position = max(0, min(len(self.history), self.position + delta))
        box = self.query_one("#prompt-input", Input)
        box.value = self.history[self.position] if self.position < len(self.history) else ""
        box.cursor_position = len(box.value)

    def action_cancel(self):
        self.dismiss(None)
