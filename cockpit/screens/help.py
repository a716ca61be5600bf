"""`?`: every binding of the screen underneath (footer-hidden ones included), with what it does."""
from __future__ import annotations

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static


def binding_rows(screen) -> list[tuple[str, str]]:
    """(keys, description) for every binding of `screen`, plus its KEYS_HELP extras (keys handled by widgets)."""
    rows: list[tuple[str, str]] = []
    seen = set()
    for b in getattr(screen, "BINDINGS", []):
        if isinstance(b, tuple):
            b = Binding(*b)
        key = b.key_display or b.key
        key = {"question_mark": "?", "slash": "/", "left_square_bracket": "[",
               "right_square_bracket": "]", "left_curly_bracket": "{", "right_curly_bracket": "}",
               "space": "space", "escape": "esc"}.get(key, key)
        desc = b.description or b.action.replace("_", " ")
        if (key, desc) not in seen:
            seen.add((key, desc))
            rows.append((key, desc))
    rows += list((getattr(screen, "KEYS_HELP", None) or {}).items())
    return rows


class HelpScreen(ModalScreen):
    BINDINGS = [Binding("escape,question_mark,q", "dismiss", "Close")]

    def __init__(self, title: str, screen):
        super().__init__()
        self.title_text = title
        self.rows = binding_rows(screen)

    def compose(self) -> ComposeResult:
        table = Table.grid(padding=(0, 2))
        table.add_column(style="bold cyan", no_wrap=True)
        table.add_column()
        for key, desc in self.rows:
            table.add_row(key, desc)
        with VerticalScroll(id="help-box") as box:
            box.border_title = f"keys · {self.title_text}"
            box.border_subtitle = "esc closes"
            yield Static(table)
            yield Static(Text("Ctrl+P opens the command palette (themes, screenshot, keys); Ctrl+Q quits from "
                              "anywhere (a live run is asked about first).", style="dim"))
