"""Bar chart of the kernels comparison: Triton's speedup over PyTorch and its memory saving, per kernel."""
from __future__ import annotations

import math

from rich.text import Text
from textual.widget import Widget

from cockpit.widgets.drawing import hbar


def kernel_metrics(ev: dict) -> tuple[float | None, float | None]:
    """For a `kernel` event (a dict, validated by the protocol): (speedup = torch_ms / triton_ms, memory saving = 1 - triton_mem / torch_mem); the event's own
    `speedup` / `mem_saving` when it has them."""
    tms, gms = ev.get("torch_ms"), ev.get("triton_ms")
    tmem, gmem = ev.get("torch_mem"), ev.get("triton_mem")
    speed = ev.get("speedup")
    if speed is None:
        speed = tms / gms if tms is not None and gms else None
    saving = ev.get("mem_saving")
    if saving is None:
        saving = 1 - gmem / tmem if tmem and gmem is not None else None
    return speed, saving


def log_fraction(x: float, lo: float, hi: float) -> float:
    """Where x sits between lo and hi on a log scale (0..1)."""
    if x is None or x <= 0:
        return 0.0
    return min(1.0, max(0.0, (math.log10(x) - math.log10(lo)) / (math.log10(hi) - math.log10(lo))))


class KernelChart(Widget):
    DEFAULT_CSS = """
    KernelChart { height: auto; width: 1fr; }
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.events: list[dict] = []

    def set_events(self, events: list[dict]):
        self.events = list(events)
        self.refresh(layout=True)

    def get_content_height(self, container, viewport, width: int) -> int:
        return max(1, 2 * len(self.events) + 1)

    def render(self):
        if not self.events:
            return Text("no results yet", style="dim")
        w = max(30, self.size.width)
        name_w = min(24, max(len(self._label(e)) for e in self.events))
        bar_w = max(6, w - name_w - 22)
        speeds = [s for s in (kernel_metrics(e)[0] for e in self.events) if s and s > 0]
        lo = min(speeds + [0.5]) / 1.5
        hi = max(speeds + [2.0]) * 1.5
        out = Text(no_wrap=True, overflow="ellipsis")
        out.append(f"{'':<{name_w}} speedup = torch ms / triton ms (log scale {lo:.2g}x..{hi:.2g}x, | = 1x); "
                   "memory saved\n", style="dim")
        one = min(bar_w - 1, int(round(log_fraction(1.0, lo, hi) * bar_w)))
        for e in self.events:
            speed, saving = kernel_metrics(e)
            label = self._label(e)[:name_w]
            bar = list(hbar(log_fraction(speed, lo, hi), bar_w))
            if 0 <= one < bar_w:
                bar[one] = "|" if bar[one] == " " else bar[one]
            out.append(f"{label:<{name_w}} ")
            style = "red" if not e.get("ok", True) else ("green" if (speed or 0) >= 1 else "yellow")
            out.append("".join(bar), style=style)
            out.append(f" {speed:7.3g}x" if speed is not None else "       -", style="bold")
            out.append("" if e.get("ok", True) else "  FAIL", style="bold red")
            out.append("\n")
            out.append(f"{'':<{name_w}} ")
            frac = max(0.0, saving) if saving is not None else 0.0
            out.append(hbar(frac, bar_w), style="magenta")
            out.append(f" {saving * 100:6.1f}% mem\n" if saving is not None else "      - mem\n", style="dim")
        out.rstrip()
        return out

    @staticmethod
    def _label(e: dict) -> str:
        shape = e.get("shape")
        s = "x".join(map(str, shape)) if isinstance(shape, (list, tuple)) else str(shape or "")
        return f"{e.get('name')} {s} {e.get('dtype') or ''}".strip()
