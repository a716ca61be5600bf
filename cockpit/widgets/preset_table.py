"""The picker's table of presets: a DataTable whose Enter is labelled "Launch" in the footer."""
from __future__ import annotations

from textual.binding import Binding
from textual.widgets import DataTable


class PresetTable(DataTable):
    BINDINGS = [
        Binding("enter", "select_cursor", "Launch"),
        Binding("j", "cursor_down", "Down", show=False),
        Binding("k", "cursor_up", "Up", show=False),
    ]
