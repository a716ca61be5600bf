"""The kernels panel's table: a DataTable whose Enter (run the highlighted kernel's comparison) is labelled in
the footer."""
from __future__ import annotations

from textual.binding import Binding
from textual.widgets import DataTable


class KernelsTable(DataTable):
    BINDINGS = [
        Binding("enter", "select_cursor", "Run kernel"),
        Binding("j", "cursor_down", "Down", show=False),
        Binding("k", "cursor_up", "Up", show=False),
    ]
