"""How often a run screen reads its log and redraws, and which of its panes redraw.

A live run shares the CPU with its trainer: the screen folds new events every TICK_S, redraws only the panes
whose own inputs changed (each pane's signature, RedrawGate), draws at most one frame per frame_interval beside a
CPU trainer, and paces its heavy panes (the loss chart, memory, system) by what their redraws measured to
cost (widgets/render_cost.py) so that redrawing them takes about REDRAW_BUDGET of a core.
"""
from __future__ import annotations

import math
import time

TICK_S = 0.25            # how often a screen folds new events and redraws (one render per tick)

# Share of one core a live run screen may spend rendering its heavy panes. A CPU run's threads take every
# core, and each millisecond the UI runs stalls them (a preempted OpenMP thread holds up its whole team),
# so the UI stays frugal there; a GPU run's trainer mostly waits on the GPU and leaves the CPU to the UI.
REDRAW_BUDGET = {"cpu": 0.003, "gpu": 0.02}
REDRAW_MIN_S = 1.0     # ... but never more often than this, nor less often than REDRAW_MAX_S
REDRAW_MAX_S = 2.0     # the chart keeps up with the status line: at most 2 s behind it (a fast CPU run of
                       # 20 steps a second showed its chart 85 steps behind the status line at 5 s)
# A live CPU run's screen draws at most one frame a second (status line, system pane and any due chart
# together: one compositor pass instead of one per event); a GPU run's draws as events arrive.
FRAME_S = {"cpu": 1.0, "gpu": 0.0}


def _device_kind(device: str | None) -> str:
    return "cpu" if (device or "cpu").startswith("cpu") else "gpu"


def frame_interval(device: str | None) -> float:
    """Least seconds between two redraws of a live run's screen."""
    return FRAME_S[_device_kind(device)]


def heavy_render_seconds(costs) -> float | None:
    """What one redraw of all the heavy panes costs together: the sum of their measured render times
    (RenderCost), the ones not measured yet left out; None when none is measured."""
    known = [c for c in costs if c is not None and math.isfinite(c) and c > 0]
    return sum(known) if known else None


def redraw_interval(render_seconds: float | None, device: str | None = None) -> float:
    """Seconds the live heavy panes (the loss chart, memory, system) wait between redraws so that redrawing
    them costs about REDRAW_BUDGET of a core, within [REDRAW_MIN_S, REDRAW_MAX_S]: on a CPU run panes that
    take 13 ms together redraw every 2 s (4.3 s would meet the budget, but the chart would lag the status
    line); at 3 ms every 1 s; on a GPU run every REDRAW_MIN_S."""
    budget = REDRAW_BUDGET[_device_kind(device)]
    if render_seconds is None or not math.isfinite(render_seconds) or render_seconds <= 0:
        return REDRAW_MIN_S
    return min(REDRAW_MAX_S, max(REDRAW_MIN_S, render_seconds / budget))


class RedrawGate:
    """Decides which panes redraw now. A pane whose signature changed redraws at once unless it redrew less
    than `interval` seconds ago; then its change waits (nothing is lost: the next call with the same or a
    newer signature draws it once the interval has passed). `force` skips the wait (a key press, the run
    ending)."""

    def __init__(self, clock=time.monotonic):
        self.clock = clock
        self.drawn: dict[str, object] = {}
        self.drawn_at: dict[str, float] = {}

    def due(self, pane: str, signature, interval: float = 0.0, force: bool = False) -> bool:
        if pane in self.drawn and self.drawn[pane] == signature:
            return False
        now = self.clock()
        if not force and pane in self.drawn_at and now - self.drawn_at[pane] < interval:
            return False
        self.drawn[pane], self.drawn_at[pane] = signature, now
        return True

    def pending(self, signatures: dict[str, object]) -> bool:
        """Some pane's latest signature is not drawn yet."""
        return any(self.drawn.get(k, object()) != v for k, v in signatures.items())
