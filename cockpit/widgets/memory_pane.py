"""The memory pane: per-layer activation bytes (measured by saved-tensor hooks) as bars, and params,
grads, optimizer state, activations and peak allocated against the VRAM budget."""
from __future__ import annotations

import textwrap

from rich.text import Text

from cockpit.widgets.drawing import hbar, pack_words
from cockpit.widgets.run_pane import StatePane
from common.fmt import fmt_bytes


def budget_bytes(s) -> int:
    if s.memory and s.memory.budget_bytes is not None:
        return s.memory.budget_bytes
    gb = s.config.get("vram_budget_gb") if isinstance(s.config, dict) else None
    return int(float(gb if isinstance(gb, (int, float)) else 12.0) * 2**30)


def memory_rows(s) -> tuple[list[tuple[str, int, int]], list[tuple[str, int | None]], int]:
    """(layers [(name, activation_bytes, param_bytes)], totals [(label, bytes)], budget bytes)."""
    if not s.memory:
        return [], [], budget_bytes(s)
    layers = [(l.get("name", "?"), l.get("activation_bytes", 0), l.get("param_bytes", 0)) for l in s.memory.layers]
    t = s.memory.totals
    totals = [(label, t.get(key)) for key, label in (("params", "params"), ("grads", "grads"),
                                                     ("optimizer", "optimizer"), ("activations", "activations"),
                                                     ("peak_allocated", "peak alloc"))]
    return layers, totals, budget_bytes(s)


def short_layer_name(name: str, width: int) -> str:
    """`transformer.h.11.attn` -> `h.11.attn` when it does not fit; keep the informative tail."""
    if len(name) <= width:
        return name
    parts = name.split(".")
    while len(parts) > 1 and len(".".join(parts)) > width:
        parts.pop(0)
    tail = ".".join(parts)
    return tail if len(tail) <= width else "…" + tail[-(width - 1):]


class MemoryPane(StatePane):
    pane = "memory"

    @staticmethod
    def signature(s, note=None) -> tuple:
        return (s.counts.get("memory", 0), s.counts.get("run_start", 0))

    def render(self):
        self.rendered()
        s = self.state
        if s is None or not s.memory:
            why = "no memory measurement yet (the first one comes with step 1)"
            return Text("\n".join(textwrap.wrap(why, max(12, self.size.width))), style="dim")
        w, h = max(20, self.size.width), max(4, self.size.height)
        layers, totals, budget = memory_rows(s)
        out = Text(no_wrap=True, overflow="ellipsis")
        tmap = dict(totals)
        used, what = tmap.get("peak alloc"), "peak allocated"
        on_gpu = used is not None         # a CUDA allocator measured the peak; on a CPU the parts are summed
        if not on_gpu:
            used = sum(v or 0 for k, v in totals if k in ("params", "grads", "optimizer", "activations"))
            what = "sum of the parts; no allocator on CPU"
        frac = used / budget if budget else 0.0
        # the VRAM budget is the GPU's: a CPU run's bytes are RAM, shown without a gauge against it
        figures = f" {fmt_bytes(used)} of {fmt_bytes(budget)}" if on_gpu else fmt_bytes(used)
        note = f" ({what})"
        gauge_w = min(30, w - 5 - len(figures) - len(note)) if on_gpu else 0
        one_line = gauge_w >= 10 or not on_gpu and len(figures) + len(note) + 5 <= w  # else: the note below
        if on_gpu and not one_line:
            gauge_w = max(6, min(30, w - 5 - len(figures)))
        out.append("VRAM " if on_gpu else "RAM  ", style="bold")
        if on_gpu:
            out.append(hbar(frac, gauge_w), style="red" if frac > 1 else "yellow" if frac > 0.8 else "green")
        out.append(figures, style="red bold" if on_gpu and frac > 1 else "")
        if one_line:
            out.append(f"{note}\n", style="dim")
            head = 1
        else:
            wrapped = pack_words(note.split(" ")[1:], w - 5)
            out.append("".join(f"\n     {line}" for line in wrapped) + "\n", style="dim")
            head = 1 + len(wrapped)
        names = {"params": "params", "grads": "grads", "optimizer": "optim", "activations": "acts"}
        parts = [f"{names[k]} {fmt_bytes(v)}" for k, v in totals if v is not None and k in names]
        lines = pack_words(parts, w, sep="  ")
        out.append("\n".join(lines) + "\n")
        head += len(lines)
        room = h - head - 1
        if room <= 0 or not layers:
            return out
        heading = f"activations by layer (measured @ step {s.memory.step})"
        if len(heading) > w:
            heading = f"activations @ step {s.memory.step}"
        out.append(heading + "\n", style="dim")
        biggest = max(a for _, a, _ in layers) or 1
        name_w = min(max(len(n) for n, _, _ in layers), max(8, w // 4))
        bar_w = max(4, w - name_w - 12)
        layers = sorted(layers, key=lambda row: -row[1])  # the largest first: what a cut list must not hide
        # room for one line only: the largest layer, not a line that only says how many are hidden
        shown = layers if len(layers) <= room else layers[:max(1, room - 1)]
        for name, a, _p in shown:
            out.append(f"{short_layer_name(name, name_w):<{name_w}} ")
            out.append(hbar(a / biggest, bar_w), style="cyan")
            out.append(f" {fmt_bytes(a):>10}\n")
        if len(shown) < len(layers) and len(shown) < room:
            rest = layers[len(shown):]
            out.append(f"… {len(rest)} more layers, {fmt_bytes(sum(a for _, a, _ in rest))}\n", style="dim")
        out.rstrip()
        return out
