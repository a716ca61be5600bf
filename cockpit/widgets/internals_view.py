"""One view of an internals probe (cockpit/internals.py: attention maps, logit lens, routing, decays ...), drawn
at the widget's width in colour; redrawn when the probe, the view or the width changes (or, for a view of the
history, the probes before it)."""
from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from cockpit.internals import View, draw_view
from common.events import Internals


class InternalsView(Static):
    DEFAULT_CSS = """
    InternalsView { width: 100%; height: auto; }
    """

    def __init__(self, **kwargs):
        super().__init__("", **kwargs)
        self.event: Internals | None = None
        self.view: View | None = None
        self.probes: list[Internals] = []   # the probes up to `event`, oldest first (for a view of the history)
        self._drawn: tuple | None = None

    def show(self, event: Internals | None, view: View | None, probes: list[Internals] | None = None):
        self.event, self.view, self.probes = event, view, probes or []
        self.redraw()

    def redraw(self):
        width = max(self.size.width or self.app.size.width - 2, 20)
        history = (len(self.probes), id(self.probes[0])) if self.view and self.view.history and self.probes else None
        key = (id(self.event), self.view.title if self.view else None, width, history)
        if key == self._drawn:
            return
        self._drawn = key
        if self.event is None or self.view is None:
            self.update(Text("no internals probe recorded yet: the trainer writes one at the first step and every "
                             "train.internals_interval steps (0 turns them off)", style="dim"))
            return
        self.update(Text("\n").join(draw_view(self.view, self.event, width, color=True,
                                                   probes=self.probes)))

    def on_resize(self):
        self.redraw()
