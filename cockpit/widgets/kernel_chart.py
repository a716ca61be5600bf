"""Bar chart of the kernels comparison, per result: Triton's speedup over PyTorch on a GPU (or, for a result
from Triton's CPU interpreter, whose timings say nothing of a GPU, its correctness), then its memory saving.

Labels are never cut: they get a column as wide as the longest, and where that leaves too little room for
the bars (a narrow terminal, long GPU shapes) each label goes on a line of its own above its bars."""
from __future__ import annotations

import math
import textwrap

from rich.text import Text
from textual.widget import Widget

from cockpit.widgets.drawing import hbar
from kernels import _table

VALUE_W = 14       # after a bar: " 12.3x  FAIL", " -150.0% mem"
MIN_BAR = 12       # a bar narrower than this says too little: the labels move onto lines of their own
FALLBACK_WIDTH = 80  # width drawn at before the widget has a size
NEEDS_GPU = "Triton's CPU interpreter: correctness and memory only; timings need a GPU"


def kernel_metrics(ev: dict) -> tuple[float | None, float | None]:
    """(speedup = torch_ms / triton_ms, memory saving = 1 - triton_mem / torch_mem) of a `kernel` event (a
    dict); speedup None for a result from Triton's interpreter."""
    return _table.speedup(ev), _table.mem_saving(ev)


def log_fraction(x: float, lo: float, hi: float) -> float:
    """Where x sits between lo and hi on a log scale (0..1)."""
    if x is None or x <= 0:
        return 0.0
    return min(1.0, max(0.0, (math.log10(x) - math.log10(lo)) / (math.log10(hi) - math.log10(lo))))


def label(ev: dict) -> str:
    return f"{ev.get('name')} {_table.fmt_shape(ev.get('shape'))} {ev.get('dtype') or ''}".strip()


def correctness(ev: dict, width: int) -> str:
    """One result's check against its PyTorch reference, in words, in at most `width` characters (the
    tolerance, then the error, left out where they do not fit)."""
    if ev.get("error"):
        return f"FAIL: {ev['error']}"[:width]
    verdict = "ok" if ev.get("ok") else "FAIL"
    err, tol = _table.worst(ev, "rel_rms_err"), ev.get("tol_rms")
    forms = []
    if err is not None:
        if isinstance(tol, (int, float)):
            forms.append(f"{verdict}: rel error {_table.fmt_err(err)}, tolerance {tol:.0e}")
        forms.append(f"{verdict}: rel error {_table.fmt_err(err)}")
    return next((f for f in forms if len(f) <= width), verdict)


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
        return max(1, len(self.draw(width).plain.splitlines()))

    def render(self):
        return self.draw(self.size.width or FALLBACK_WIDTH)

    def draw(self, width: int) -> Text:
        if not self.events:
            return Text("no results yet", style="dim")
        timed = [e for e in self.events if not _table.interpreted(e)]
        speeds = [s for s in (kernel_metrics(e)[0] for e in timed) if s and s > 0]
        lo, hi = min(speeds + [0.5]) / 1.5, max(speeds + [2.0]) * 1.5
        out = Text(no_wrap=True, overflow="ellipsis")
        legend = []
        if timed:
            legend.append(f"speedup = torch ms / triton ms, forward + backward, on the GPU's clock (log scale "
                          f"{lo:.2g}x..{hi:.2g}x, | = 1x)")
        if len(timed) < len(self.events):
            legend.append(NEEDS_GPU)
        legend.append("memory saved = 1 - triton peak / torch peak")
        for line in legend:
            for part in textwrap.wrap(line, max(20, width)):
                out.append(part + "\n", style="dim")
        name_w = max(len(label(e)) for e in self.events)
        stacked = width - name_w - 1 - VALUE_W < MIN_BAR
        indent = 0 if stacked else name_w + 1
        bar_w = max(1, width - indent - VALUE_W)
        one = min(bar_w - 1, int(round(log_fraction(1.0, lo, hi) * bar_w)))
        for e in self.events:
            speed, saving = kernel_metrics(e)
            ok = e.get("ok", True)
            out.append(label(e) + ("\n" if stacked else " " * (name_w - len(label(e)) + 1)))
            if _table.interpreted(e):
                out.append(correctness(e, bar_w + VALUE_W), style="green" if ok else "bold red")
            else:
                bar = list(hbar(log_fraction(speed, lo, hi), bar_w))
                if 0 <= one < bar_w and bar[one] == " ":
                    bar[one] = "|"
                out.append("".join(bar), style="red" if not ok else ("green" if (speed or 0) >= 1 else "yellow"))
                out.append(" " + (f"{speed:.3g}x" if speed is not None else "-").rjust(6), style="bold")
                out.append("" if ok else "  FAIL", style="bold red")
            out.append("\n" + " " * indent)
            out.append(hbar(max(0.0, saving) if saving is not None else 0.0, bar_w), style="magenta")
            out.append(" " + (f"{saving * 100:.1f}%" if saving is not None else "-").rjust(6) + " mem\n", style="dim")
        out.rstrip()
        return out
