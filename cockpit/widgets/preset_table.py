"""The picker's table of presets: a DataTable whose Enter is labelled "Launch" in the footer."""
from __future__ import annotations

from textual.binding import Binding

from cockpit.widgets.row_table import RowTable


class PresetTable(RowTable):
    BINDINGS = [
        Binding("enter", "select_cursor", "Launch"),
    ]
