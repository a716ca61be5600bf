"""A DataTable of rows to pick from (presets, runs): j/k move like ↓/↑, and home/end go to the first and last
row (DataTable's own home/end scroll sideways, which a table of rows has no use for)."""
from __future__ import annotations

from textual.binding import Binding
from textual.widgets import DataTable


class RowTable(DataTable):
    BINDINGS = [
        Binding("j", "cursor_down", "Down", show=False),
        Binding("k", "cursor_up", "Up", show=False),
        Binding("home", "scroll_top", "First row", show=False),
        Binding("end", "scroll_bottom", "Last row", show=False),
    ]
