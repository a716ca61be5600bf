"""The runs browser's table: a DataTable whose Enter is labelled "Open" in the footer."""
from __future__ import annotations

from textual.binding import Binding

from cockpit.widgets.row_table import RowTable


class RunsTable(RowTable):
    BINDINGS = [
        Binding("enter", "select_cursor", "Open"),
    ]
