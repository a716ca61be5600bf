"""RenderCost: a widget that knows what one of its redraws costs the UI thread.

The run screen paces its heavy panes by this (cockpit/screens/pacing.py, redraw_interval). A redraw is more
than render(): Textual then turns the renderable into styled strips (for the loss chart, decoding plotext's
ANSI output is as dear as building the chart), so the whole of render_lines is timed, but only on passes
that rendered afresh: a compositor pass that reuses the cached lines costs nothing worth counting.
"""
from __future__ import annotations

import time


class RenderCost:
    """Mix in before the Widget class; call `self.rendered()` in render()."""

    render_seconds: float | None = None   # smoothed CPU time of one redraw (render + strips)
    _fresh = False

    def rendered(self):
        self._fresh = True

    def render_lines(self, crop):
        # CPU time of this thread, not wall time: a busy machine must not make a pane look dearer than it is
        t0 = time.thread_time()
        lines = super().render_lines(crop)
        if self._fresh:
            self._fresh = False
            took = time.thread_time() - t0
            self.render_seconds = took if self.render_seconds is None else 0.7 * self.render_seconds + 0.3 * took
        return lines
