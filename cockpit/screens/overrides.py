"""`e` in the picker: edit k=v overrides for a preset before launching, validated by trainers.config.load
(the same check the trainer makes); a bad key or value shows the one-line error and keeps the dialog open."""
from __future__ import annotations

import shlex

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, Static


def parse_overrides_text(text: str) -> list[str]:
    """`train.max_steps=50 data.path="my file.txt"` -> ["train.max_steps=50", "data.path=my file.txt"]."""
    try:
        return shlex.split(text)
    except ValueError as e:
        from trainers.config import ConfigError

        raise ConfigError(f"overrides: {e}; close the quote") from None


def validate_overrides(preset: str, text: str) -> tuple[list[str], str | None, dict | None]:
    """(overrides, error line or None, resolved config or None), validated by trainers.config.load."""
    from trainers.config import ConfigError, load

    try:
        items = parse_overrides_text(text)
        return items, None, load(preset, items)
    except ConfigError as e:
        return [], str(e).splitlines()[0] if str(e) else "invalid overrides", None


def preset_keys(preset: str) -> list[str]:
    """The dotted keys a preset accepts that people usually change (for the hint line)."""
    from common.dotted import NestedTooDeep
    from trainers import config

    try:
        flat = config.flatten(config.strip_private(config.load(preset)))
    except (config.ConfigError, NestedTooDeep):
        return []
    keys = [k for k in flat if k.startswith(("model.", "train.max_steps", "train.batch_size", "train.lr",
                                              "data.path"))]
    return keys


class OverridesScreen(ModalScreen):
    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, preset: str, current: list[str]):
        super().__init__()
        self.preset = preset
        self.current = list(current)

    def compose(self) -> ComposeResult:
        with Vertical(id="overrides-box") as box:
            box.border_title = f"overrides for {self.preset}"
            box.border_subtitle = "enter applies · esc cancels"
            yield Static(Text("k=v separated by spaces, e.g. train.max_steps=200 model.n_layer=2", style="dim"))
            yield Input(value=" ".join(shlex.quote(x) for x in self.current), id="overrides-input")
            yield Static("", id="overrides-error")
            keys = preset_keys(self.preset)
            if keys:
                yield Static(Text("keys: " + "  ".join(keys), style="dim"), id="overrides-keys")

    def on_mount(self):
        self.query_one("#overrides-input", Input).focus()

    @on(Input.Submitted, "#overrides-input")
    def submit(self, event: Input.Submitted):
        items, error, _cfg = validate_overrides(self.preset, event.value)
        if error:
            self.query_one("#overrides-error", Static).update(Text(error, style="bold red"))
            return
        self.dismiss(items)

    def action_cancel(self):
        self.dismiss(None)
