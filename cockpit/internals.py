"""Drawing an `internals` event (common/events.py): its arrays grouped into views, each a few lines of rich Text
with a one-line caption that says what to look for. The internals screen (cockpit/screens/internals.py) shows
one view at a time; `cockpit --replay` prints them all as text (cockpit/report.py). No Textual, no torch.

Heatmaps are coloured half-block cells, two rows of values per line of text (▀: the upper value the
foreground, the lower one the background), with the probe's tokens on the axes; without colour they are
glyphs, one row per line, darker glyphs for larger values. Histograms, number lines and bars are text.
"""
from __future__ import annotations

import itertools
import math
import re
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from rich.cells import cell_len
from rich.style import Style
from rich.text import Text

from common.events import Internals

if TYPE_CHECKING:
    import numpy as np

RAMP = " .:-=+*#%@"                      # glyphs from low to high, for text without colour
SPARK = " ▁▂▃▄▅▆▇█"                      # a column filling up, by eighths
EIGHTHS = " ▏▎▍▌▋▊▉"                     # a bar's last cell, by eighths
SEQUENTIAL = ((68, 1, 84), (59, 82, 139), (33, 145, 140), (94, 201, 98), (253, 231, 37))  # viridis
DIVERGING = ((33, 102, 172), (247, 247, 247), (178, 24, 43))                             # blue, white, red
CATEGORIES = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
              (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207))
MISSING = Style(color="grey30", bgcolor="grey11")
MISSING_RGB = (78, 78, 78)               # grey30: a value that is not a number, in a saved heatmap
DIM = Style(dim=True)


def finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def lerp_rgb(stops, t: float) -> tuple[int, int, int]:
    """The colour at t in [0, 1] along `stops`, as (r, g, b)."""
    t = min(max(t, 0.0), 1.0) * (len(stops) - 1)
    i = min(int(t), len(stops) - 2)
    f = t - i
    r, g, b = (round(a + (c - a) * f) for a, c in zip(stops[i], stops[i + 1]))
    return r, g, b


def lerp_color(stops, t: float) -> str:
    """The colour at t in [0, 1] along `stops`, as rich's rgb()."""
    return "rgb({},{},{})".format(*lerp_rgb(stops, t))


@dataclass
class Scale:
    """Values to [0, 1]: linear from lo to hi, or symmetric about 0 (diverging)."""

    lo: float
    hi: float
    stops: tuple = SEQUENTIAL

    def t(self, x: float) -> float:
        return 0.5 if self.hi <= self.lo else (x - self.lo) / (self.hi - self.lo)

    def color(self, x) -> str | None:
        return lerp_color(self.stops, self.t(x)) if finite(x) else None

    def glyph(self, x) -> str:
        if not finite(x):
            return "?"
        return RAMP[min(int(self.t(x) * len(RAMP)), len(RAMP) - 1)]


def span(values, symmetric: bool = False) -> Scale:
    vals = [v for v in values if finite(v)]
    if not vals:
        return Scale(0.0, 1.0)
    if symmetric:
        m = max(abs(v) for v in vals) or 1.0
        return Scale(-m, m, DIVERGING)
    return Scale(min(vals), max(vals))


def first_char(label: str) -> str:
    """One column's worth of a token: its first visible character (a space as ␣)."""
    ch = (label or "?")[0]
    return "␣" if ch == " " else ch


def matrix(data: list, rows: int, cols: int, offset: int = 0) -> list[list[float]]:
    return [data[offset + r * cols: offset + (r + 1) * cols] for r in range(rows)]


# --- primitives ------------------------------------------------------------------------------------------------

def heatmap(rows: list[list[float]], scale: Scale, color: bool, cw: int = 1) -> list[Text]:
    """A matrix as lines of text: coloured half blocks (two rows a line), or one glyph per value; each value
    `cw` characters wide (2 keeps a square cell square on most terminals' fonts)."""
    lines = []
    if not color:
        for row in rows:
            lines.append(Text("".join(scale.glyph(x) * cw for x in row)))
        return lines
    for i in range(0, len(rows), 2):
        top, bottom = rows[i], rows[i + 1] if i + 1 < len(rows) else None
        line = Text()
        for j, x in enumerate(top):
            fg = scale.color(x)
            bg = scale.color(bottom[j]) if bottom is not None else None
            if fg is None and (bottom is None or bg is None):
                line.append("▀" * cw, MISSING)
            else:
                line.append("▀" * cw, Style(color=fg or "grey30", bgcolor=bg))
        lines.append(line)
    return lines


def with_axes(cells: list[Text], row_labels: list[str], col_labels: list[str] | None, color: bool,
              cw: int = 1) -> list[Text]:
    """Heatmap lines with the row labels at their left (two a line in colour) and the column labels below."""
    out = []
    per_line = 2 if color else 1
    for i, line in enumerate(cells):
        labels = "".join(first_char(l) for l in row_labels[i * per_line:(i + 1) * per_line]).ljust(per_line)
        out.append(Text.assemble((labels + " ", DIM)) + line)
    if col_labels is not None:
        out.append(Text(" " * (per_line + 1) + "".join(first_char(l).ljust(cw) for l in col_labels), DIM))
    return out


def side_by_side(blocks: list[list[Text]], gap: int = 2) -> list[Text]:
    height = max(len(b) for b in blocks)
    widths = [max((b_line.cell_len for b_line in b), default=0) for b in blocks]
    out = []
    for i in range(height):
        line = Text()
        for b, w in zip(blocks, widths):
            part = b[i] if i < len(b) else Text("")
            line.append_text(part)
            line.append(" " * (w - part.cell_len + gap))
        out.append(line)
    return out


def short_names(labels: list[str]) -> list[str]:
    """Parameter names without the first component they all share (`transformer.`)."""
    heads = {l.split(".", 1)[0] for l in labels}
    if len(heads) == 1 and all("." in l for l in labels):
        return [l.split(".", 1)[1] for l in labels]
    return labels


def number_line(values: list[float], labels: list[str], lo: float, hi: float, width: int, marks=(),
                fmt: str = "{:.2f}") -> list[Text]:
    """Each value a dot on a number line from lo to hi, with guide marks (e.g. the healthy -3 of update ratios)."""
    labels = short_names(labels)
    name_w = min(max((len(l) for l in labels), default=4), 28)
    width = max(width - name_w - 10, 10)

    def col(x):
        return min(max(round((x - lo) / (hi - lo) * (width - 1)), 0), width - 1)

    out = []
    for label, x in zip(labels, values):
        track = ["─"] * width
        for m in marks:
            track[col(m)] = "┼"
        line = Text.assemble((label[-name_w:].rjust(name_w) + " ", DIM))
        if finite(x):
            track[col(x)] = "●"
            line.append("".join(track))
            line.append(" " + fmt.format(x))
        else:
            line.append("".join(track), DIM)
            line.append("  -", DIM)
        out.append(line)
    axis = [" "] * width
    for m in (lo, *marks, hi):
        text = f"{m:g}"
        c = min(col(m), width - len(text))
        axis[c:c + len(text)] = text
    out.append(Text.assemble((" " * (name_w + 1) + "".join(axis), DIM)))
    return out


def bars(values: list[float], labels: list[str], width: int, fmt: str = "{:.3g}", style: str = "cyan") -> list[Text]:
    """Horizontal bars from 0 to the largest value."""
    name_w = min(max((len(l) for l in labels), default=4), 28)
    width = max(width - name_w - 12, 8)
    top = max((v for v in values if finite(v)), default=0.0) or 1.0
    out = []
    for label, x in zip(labels, values):
        line = Text.assemble((label[-name_w:].rjust(name_w) + " ", DIM))
        if finite(x):
            n = max(x, 0.0) / top * width
            line.append("█" * int(n) + (EIGHTHS[min(int((n - int(n)) * 8), 7)] if n < width else ""), style)
            line.append(" " + fmt.format(x))
        else:
            line.append("-", DIM)
        out.append(line)
    return out


def token_strip(values: list[float], tokens: list[str], scale: Scale, color: bool,
                categorical: bool = False, cw: int = 2) -> Text:
    """The probe's tokens in a row, each on the colour of its value in `cw` cells (or, without colour, a glyph
    beneath)."""
    line = Text()
    for x, tok in zip(values, tokens):
        ch = first_char(tok) + (" " if color and cw > 1 else "")
        if not color:
            line.append(str(int(x)) if categorical and finite(x) else scale.glyph(x))
        elif categorical and finite(x):
            rgb = CATEGORIES[int(x) % len(CATEGORIES)]
            line.append(ch, Style(color="black", bgcolor=f"rgb({rgb[0]},{rgb[1]},{rgb[2]})"))
        else:
            bg = scale.color(x)
            line.append(ch, Style(color="black" if scale.t(x) > 0.5 else "white", bgcolor=bg) if bg else MISSING)
    return line


# --- views -----------------------------------------------------------------------------------------------------

@dataclass
class View:
    title: str
    arrays: tuple[str, ...]      # the arrays it draws (the first present decides that the view is shown)
    caption: str
    draw: Callable[..., list[Text]]   # (event, width, colour) -> lines; with history, also the probes
    history: bool = False        # draws the probes up to the event (oldest first), not the event alone


def _tokens(ev: Internals, n: int) -> list[str]:
    """The probe's tokens as labels of an axis of n entries (bin numbers when the axis was pooled)."""
    toks = ev.tokens or []
    return toks if len(toks) == n else [str(i % 10) for i in range(n)]


def draw_maps(ev: Internals, width: int, color: bool, name: str = "attention") -> list[Text]:
    a = ev.array(name) or ev.array("retention")
    name = a["name"]
    shape = a["shape"]
    if len(shape) < 2:
        return draw_generic(name)(ev, width, color)
    L, H, T, S = ([1, 1] + shape)[-4:]
    data = a["data"]
    scale = Scale(0.0, 1.0) if name == "attention" else span(data, symmetric=True)
    toks = _tokens(ev, T)
    gammas = (ev.array("gamma") or {}).get("data") or []
    cw = 2 if min(H, 4) * (2 * S + 6) <= width else 1    # square cells when a row of heads still fits
    map_w = cw * S + 4
    per_row = max(1, min(H, (width + 2) // (map_w + 2)))
    per_row = -(-H // -(-H // per_row))                    # as even as the rows can be: 4 heads as 2 + 2, not 3 + 1
    out: list[Text] = []
    for layer in range(L):
        for h0 in range(0, H, per_row):
            blocks, heads = [], range(h0, min(H, h0 + per_row))
            for h in heads:
                rows = matrix(data, T, S, (layer * H + h) * T * S)
                title = f"L{layer} H{h}" + (f" γ={gammas[h]:.4g}" if h < len(gammas) and name == "retention" else "")
                blocks.append([Text(title[:map_w], "bold")] + with_axes(heatmap(rows, scale, color, cw), toks,
                                                                      _tokens(ev, S), color, cw))
            out += side_by_side(blocks)
        out.append(Text(""))
    out.append(color_key(scale, color, "attention weight" if name == "attention" else "retention score", width))
    return out


def color_key(scale: Scale, color: bool, what: str, width: int | None = None) -> Text:
    """`what: lo ▁▂…█ hi`; within `width` cells, `what` goes on a line of its own when the whole is wider."""
    ramp_w = len(f"{scale.lo:.3g}  {scale.hi:.3g}") + 16
    sep = "\n" if width is not None and cell_len(what) + 2 + ramp_w > width else ": "
    key = Text.assemble((f"{what}{sep}{scale.lo:.3g} ", DIM))
    for i in range(16):
        x = scale.lo + (scale.hi - scale.lo) * i / 15
        if color:
            key.append("█", Style(color=scale.color(x)))
        else:
            key.append(scale.glyph(x))
    key.append(f" {scale.hi:.3g}", DIM)
    return key


def draw_lens(ev: Internals, width: int, color: bool) -> list[Text]:
    a = ev.array("logit_lens")
    L, P = a["shape"] if len(a["shape"]) == 2 else (1, a["shape"][0])
    cells = a.get("cells") or ["?"] * len(a["data"])
    toks = ev.tokens or []
    cell_w = max(6, min(12, (width - 10) // max(P, 1) - 1))
    head = Text.assemble(("read at".ljust(9), DIM))
    for p in range(P):
        tok = toks[len(toks) - P + p] if len(toks) >= P else "?"
        head.append(f"'{tok.replace(' ', '␣')}'"[:cell_w].ljust(cell_w + 1), "bold")
    out = [head]
    scale = Scale(0.0, 1.0)
    labels = a.get("labels") or [f"layer {i}" for i in range(L)]
    for layer in range(L):
        line = Text.assemble((labels[layer][:8].ljust(9), DIM))
        for p in range(P):
            i = layer * P + p
            prob = a["data"][i]
            word = (cells[i] or "?").replace(" ", "␣")
            text = f"{word[:cell_w - 4]} {prob:.2f}"[-cell_w:] if finite(prob) else word
            if color and finite(prob):
                line.append(text.ljust(cell_w), Style(bgcolor=scale.color(prob),
                                                      color="black" if prob > 0.5 else "white"))
                line.append(" ")
            else:
                line.append(text.ljust(cell_w + 1))
        out.append(line)
    return out


def _strip_rows(ev: Internals, name: str, color: bool, width: int, categorical: bool = False,
                log: bool = False) -> list[Text]:
    """A (layer, token) array as one row of coloured tokens per layer, each row on its own scale (which tokens
    stand out within a layer), its range at the end of the row; a token takes two cells in colour where the row
    still fits `width`, else one."""
    a = ev.array(name)
    if a is None or len(a["shape"]) != 2:
        return []
    L, T = a["shape"]
    data = a["data"]
    toks = _tokens(ev, T)
    labels = a.get("labels") or [f"layer {i}" for i in range(L)]
    out = []
    cw = 2 if color and 10 + 2 * T + (0 if categorical else 22) <= width else 1   # 22: "  1.23e-05 … 4.56e+03"
    if not color:
        out.append(Text(" " * 10 + "".join(first_char(t) for t in toks), DIM))
    for layer in range(L):
        row = data[layer * T:(layer + 1) * T]
        shown = [math.log10(x) if finite(x) and x > 0 else math.nan for x in row] if log else row
        scale = span(shown)
        line = Text.assemble((labels[layer][:9].ljust(10), DIM)) + token_strip(shown, toks, scale, color, categorical, cw)
        if not categorical:
            lo, hi = (10 ** scale.lo, 10 ** scale.hi) if log else (scale.lo, scale.hi)
            line.append(f"  {lo:.3g} … {hi:.3g}", DIM)
        out.append(line)
    if not categorical:
        out.append(Text(" " * 10 + "each layer on its own scale: " + ("dark low, bright high" if color else
                                                                      f"'{RAMP[1]}' low … '{RAMP[-1]}' high")
                        + (" (log scale)" if log else ""), DIM))
    return out


def draw_experts(ev: Internals, width: int, color: bool) -> list[Text]:
    out = [Text("first-choice expert of each probe token", "bold")]
    out += _strip_rows(ev, "expert", color, width, categorical=True)
    load = ev.array("expert_load")
    if load is not None and len(load["shape"]) == 2:
        L, E = load["shape"]
        legend = Text.assemble(("experts   ", DIM))
        for e in range(E):
            rgb = CATEGORIES[e % len(CATEGORIES)]
            legend.append(f" {e} ", Style(color="black", bgcolor=f"rgb({rgb[0]},{rgb[1]},{rgb[2]})") if color else None)
        out.append(legend)
        out.append(Text(""))
        out.append(Text("token-choices per expert (load)", "bold"))
        labels = load.get("labels") or [f"layer {i}" for i in range(L)]
        for layer in range(L):
            out.append(Text.assemble((labels[layer], DIM)))
            out += bars(load["data"][layer * E:(layer + 1) * E], [f"expert {e}" for e in range(E)], width, "{:.0f}")
    ent = ev.array("router_entropy")
    if ent is not None:
        out += [Text(""), Text("router entropy per token (nats; dark: sure, bright: undecided)", "bold")]
        out += _strip_rows(ev, "router_entropy", color, width)
    return out


def labelled_entries(label: str, entries: list[str], width: int, label_w: int = 10) -> list[Text]:
    """`label` then the entries two spaces apart, on as many lines of `width` cells as they need (continued
    under the first entry, never split), so that a row of numbers never wraps into the label column."""
    lines, line = [], ""
    room = max(width - label_w, 1)
    for entry in entries:
        joined = f"{line}  {entry}" if line else entry
        if line and cell_len(joined) > room:
            lines.append(line)
            line = entry
        else:
            line = joined
    lines.append(line)
    return [Text.assemble(((label[:label_w - 1] if k == 0 else "").ljust(label_w), DIM), text)
            for k, text in enumerate(lines)]


def draw_selectivity(ev: Internals, width: int, color: bool) -> list[Text]:
    out = [Text("Δ_t per probe token (mean over channels)", "bold")]
    out += _strip_rows(ev, "delta", color, width, log=True)
    if ev.array("exp_delta_A") is not None:
        out += [Text(""), Text("share of the state kept, mean exp(Δ_t A)", "bold")]
        out += _strip_rows(ev, "exp_delta_A", color, width)
    a = ev.array("A")
    if a is not None and len(a["shape"]) == 2:
        L, N = a["shape"]
        out += [Text(""), Text("time scales: log10(-A_n) per state n, mean over channels", "bold")]
        labels = a.get("labels") or [f"layer {i}" for i in range(L)]
        for layer in range(L):
            vals = a["data"][layer * N:(layer + 1) * N]
            out += labelled_entries(labels[layer], [f"{v:.2f}".replace("-0.00", "0.00") if finite(v) else "-"
                                                    for v in vals], width)
    return out


def draw_decay(ev: Internals, width: int, color: bool) -> list[Text]:
    a = ev.array("decay")
    out = []
    if a is not None and len(a["shape"]) == 3:
        L, H, Q = a["shape"]
        # the track takes what the label (10), "head h ", "0|", "|1" and " median 0.1234" leave
        w = max(width - 10 - len(f"head {H - 1} ") - 4 - len(" median 0.0000"), 20)
        out.append(Text("w_t per head: min ─ [quartiles ━ median ┃] ─ max, on 0 … 1", "bold"))
        labels = a.get("labels") or [f"layer {i}" for i in range(L)]
        for layer in range(L):
            for h in range(H):
                q = a["data"][(layer * H + h) * Q:(layer * H + h + 1) * Q]
                track = [" "] * w
                if len(q) == 5 and all(finite(x) for x in q):
                    c = [min(max(round(x * (w - 1)), 0), w - 1) for x in q]
                    for i in range(c[0], c[4] + 1):
                        track[i] = "─"
                    for i in range(c[1], c[3] + 1):
                        track[i] = "━"
                    track[c[2]] = "┃"
                    tail = f" median {q[2]:.4f}"
                else:
                    tail = " -"
                name = (labels[layer] if h == 0 else "")[:9].ljust(10)
                out.append(Text.assemble((f"{name}head {h} ", DIM), ("0|" + "".join(track) + "|1", "green"),
                                         (tail, DIM)))
    return out


def labelled_rows(rows: list[list[float]], labels: list[str], scale: Scale, color: bool, cw: int = 1,
                  label_w: int = 10) -> list[Text]:
    """A matrix as one line of text per row, each row's label at its left (in colour each row fills both
    halves of its line's cells, so that every row keeps its own label)."""
    lines = heatmap([r for row in rows for r in (row, row)] if color else rows, scale, color, cw)
    return [Text.assemble((label[:label_w - 1].ljust(label_w), DIM)) + line for label, line in zip(labels, lines)]


def draw_state(ev: Internals, width: int, color: bool) -> list[Text]:
    out = [Text("‖S_t‖: norm of each layer's WKV state after each probe token", "bold")]
    return out + _strip_rows(ev, "state_norm", color, width)


def draw_token_shift(ev: Internals, width: int, color: bool) -> list[Text]:
    out = []
    mix = ev.array("token_shift")
    if mix is not None and len(mix["shape"]) == 2:
        L, M = mix["shape"]
        names = mix.get("cells") or [str(i) for i in range(L * M)]
        out.append(Text("learned token shift μ: share of the previous token each projection reads (mean over "
                        "channels)", "bold"))
        labels = mix.get("labels") or [f"layer {i}" for i in range(L)]
        for layer in range(L):
            vals = mix["data"][layer * M:(layer + 1) * M]
            out += labelled_entries(labels[layer], [f"{names[layer * M + i]} {v:.2f}" if finite(v) else "-"
                                                    for i, v in enumerate(vals)], width)
    dd = ev.array("token_shift_dd")
    if dd is not None and len(dd["shape"]) == 3:
        L, M, T = dd["shape"]
        data = list(dd["data"])
        learned = mix is not None and mix["shape"][0] == L and mix["shape"][1] >= M
        if learned:  # ddlerp's own part: the coefficient at each token less the learned μ it starts from
            M0 = mix["shape"][1]
            data = [x - mix["data"][(i // (M * T)) * M0 + (i // T) % M] for i, x in enumerate(data)]
        scale = span(data, symmetric=learned)
        toks = _tokens(ev, T)
        cw = 2 if 12 + 2 * T <= width else 1
        mixes = [f"att {m}" for m in "wkvrg"] if M == 5 else [f"mix {i}" for i in range(M)]
        labels = dd.get("labels") or [f"layer {i}" for i in range(L)]
        out += [Text(""), Text("data-dependent token shift (ddlerp) at each probe token, mean over channels"
                               + (", less the learned μ" if learned else ""), "bold")]
        for layer in range(L):
            out.append(Text(labels[layer], DIM))
            out += labelled_rows(matrix(data, M, T, layer * M * T), mixes, scale, color, cw, label_w=12)
        out.append(Text(" " * 12 + "".join(first_char(t).ljust(cw) for t in toks), DIM))
        out.append(color_key(scale, color, "more of the previous token than μ (+) or less (-)" if learned
                             else "share of the previous token", width))
    return out


def _load_shares(ev: Internals) -> list[list[float]] | None:
    """The probe's expert_load as each expert's share of its layer's token-choices, (layer, expert)."""
    a = ev.array("expert_load")
    if a is None or len(a["shape"]) != 2:
        return None
    L, E = a["shape"]
    shares = []
    for row in matrix(a["data"], L, E):
        total = sum(x for x in row if finite(x)) or 1.0
        shares.append([x / total if finite(x) else math.nan for x in row])
    return shares


def draw_load_history(ev: Internals, width: int, color: bool, probes: list[Internals]) -> list[Text]:
    """Each MoE layer as an expert-by-probe heatmap of load shares, the newest probes that fit the width."""
    load = ev.array("expert_load")
    if load is None or len(load["shape"]) != 2:
        return draw_generic("expert_load")(ev, width, color)
    L, E = load["shape"]
    label_w = 11
    cw = 2 if label_w + 2 * len(probes) <= width else 1
    history = [(p.step, _load_shares(p)) for p in probes
               if p.array("expert_load") is not None and p.array("expert_load")["shape"] == [L, E]]
    history = history[-max((width - label_w) // cw, 1):]
    scale = Scale(0.0, max([1.0 / E] + [x for _, sh in history for row in sh for x in row if finite(x)]))
    labels = load.get("labels") or [f"layer {i}" for i in range(L)]
    out = [Text(f"share of each probe's token-choices per expert, over {len(history)} probes (oldest left)",
                "bold")]
    for layer in range(L):
        out.append(Text(labels[layer], DIM))
        rows = [[sh[layer][e] for _, sh in history] for e in range(E)]
        out += labelled_rows(rows, [f"expert {e}" for e in range(E)], scale, color, cw, label_w)
    first, last = history[0][0], history[-1][0]
    out.append(Text(" " * label_w + (f"step {first} … step {last}" if first != last else f"step {last}"), DIM))
    out.append(color_key(scale, color, f"load share (even: 1/{E} = {1 / E:.3g})", width))
    return out


def draw_dropped(ev: Internals, width: int, color: bool) -> list[Text]:
    a = ev.array("dropped")
    labels = a.get("labels") or [str(i) for i in range(len(a["data"]))]
    load = ev.array("expert_load")
    routed = None
    if load is not None and len(load["shape"]) == 2 and load["shape"][0] == len(labels):
        routed = [sum(x for x in row if finite(x)) for row in matrix(load["data"], *load["shape"])]
    out = [Text("token-choices past their expert's training capacity, were the probe a training batch", "bold")]
    out += bars(a["data"], labels, width, "{:.0f}", "red")
    if routed:
        out.append(Text("of " + ", ".join(f"{r:.0f}" for r in routed) + " token-choices routed per layer", DIM))
    return out


def draw_outliers(ev: Internals, width: int, color: bool) -> list[Text]:
    a = ev.array("act_outliers")
    shape = a["shape"]
    n, k = (shape[0], shape[1]) if len(shape) == 2 else (shape[0], 1)
    cells = a.get("cells") or [str(i) for i in range(n * k)]
    labels = a.get("labels") or [str(i) for i in range(n)]
    tops = [a["data"][i * k] for i in range(n)]
    name_w = min(max((len(label) for label in labels), default=4), 28)
    for shown in range(k, -1, -1):   # as many top channels as leave the bars 8 cells or more
        channels = [", ".join(f"{cells[i * k + j]} ×{a['data'][i * k + j]:.3g}" if finite(a["data"][i * k + j])
                              else "-" for j in range(shown)) for i in range(n)]
        tail = max((len(c) for c in channels), default=0) + 5 if shown else 0
        if width - tail >= name_w + 20 or not shown:
            break
    out = [Text("largest channel |x̂| over the median |x̂| of each BitLinear's input (×)"
                + (", and its top channels" if shown else ""), "bold")]
    lines = bars(tops, labels, width - tail, "×{:.3g}", "yellow")
    for line, text in zip(lines, channels if shown else []):
        line.append("  ch " + text, DIM)
    return out + lines


def draw_ternary(ev: Internals, width: int, color: bool) -> list[Text]:
    out = []
    h = ev.array("w_over_gamma")
    if h is not None:
        lo, hi = h.get("lo", -2.0), h.get("hi", 2.0)
        vals = h["data"]
        top = max((v for v in vals if finite(v)), default=0) or 1.0
        n = len(vals)
        out.append(Text("W/γ of every BitLinear (share of weights per bin)", "bold"))
        for level in range(4, 0, -1):  # four lines of bars, the tallest bin filling them
            line = Text()
            for v in vals:
                f = (max(v, 0) / top * 4 if finite(v) else 0) - (level - 1)
                line.append(SPARK[min(max(round(f * 8), 0), 8)], "cyan")
            out.append(line)

        def col(x):
            return min(max(round((x - lo) / (hi - lo) * n), 0), n - 1)
        axis = ["─"] * n
        for m in (-0.5, 0.5):
            axis[col(m)] = "┼"
        out.append(Text.assemble(("".join(axis), DIM)))
        labels = [" "] * (n + 6)
        for m in (lo, -0.5, 0, 0.5, hi):
            t = f"{m:g}"
            c = min(col(m), n + 6 - len(t))
            labels[c:c + len(t)] = t
        out.append(Text.assemble(("".join(labels), DIM)))
        out.append(Text.assemble(("┼ the rounding thresholds ±0.5: inside → 0, outside → ±1", DIM)))
    f = ev.array("flip_share")
    if f is not None:
        out += [Text(""), Text("share of ternary weights that flipped since the previous probe", "bold")]
        labels = f.get("labels") or [str(i) for i in range(len(f["data"]))]
        out += bars(f["data"], labels, width, "{:.2%}")
    return out


def draw_loss_by_t(ev: Internals, width: int, color: bool) -> list[Text]:
    a = ev.array("loss_by_t")
    n = len(a["data"])
    lo, hi = a.get("lo", 0.0), a.get("hi", float(n))
    step = (hi - lo) / max(n, 1)
    labels = [f"t {lo + i * step:.0f}-{lo + (i + 1) * step:.0f}" for i in range(n)]
    return [Text("loss on the fixed probe, by timestep", "bold")] + bars(a["data"], labels, width, "{:.4f}")


def draw_adapters(ev: Internals, width: int, color: bool) -> list[Text]:
    out = []
    sv = ev.array("lora_sv")
    if sv is not None and len(sv["shape"]) == 2:
        L, K = sv["shape"]
        labels = sv.get("labels") or [str(i) for i in range(L)]
        name_w = max(min(max(len(x) for x in labels), 40, width - K - 11), 8)  # a long name keeps its end
        out.append(Text("singular values of ΔW = B·A per adapted layer, largest first (each row scaled to its own)",
                        "bold"))
        for layer in range(L):
            vals = sv["data"][layer * K:(layer + 1) * K]
            top = max((v for v in vals if finite(v)), default=0.0) or 1.0
            spark = "".join(SPARK[min(max(round(v / top * 8), 0), 8)] if finite(v) else "?" for v in vals)
            out.append(Text.assemble((labels[layer][-name_w:].rjust(name_w) + " ", DIM), (spark, "cyan"),
                                     (f" σ1 {vals[0]:.3g}" if vals and finite(vals[0]) else "", DIM)))
    ov = ev.array("lora_overlap")
    if ov is not None:
        out += [Text(""), Text("share of ΔW inside W0's top singular directions (as many as the adapter's rank)",
                               "bold")]
        out += bars(ov["data"], ov.get("labels") or [str(i) for i in range(len(ov["data"]))], width, "{:.1%}")
    return out


def draw_updates(ev: Internals, width: int, color: bool) -> list[Text]:
    out = []
    g = ev.array("grad_norm")
    if g is not None:
        out.append(Text("gradient norm per layer (after clipping)", "bold"))
        out += bars(g["data"], g.get("labels") or [str(i) for i in range(len(g["data"]))], width, "{:.3g}", "magenta")
    r = ev.array("update_ratio")
    if r is not None:
        out += [Text(""), Text("log10 ‖ΔW‖/‖W‖ per parameter tensor (┼ at -3: a healthy learning rate)",
                               "bold")]
        vals = r["data"]
        lo = min([-6.0] + [v for v in vals if finite(v)])
        hi = max([0.0] + [v for v in vals if finite(v)])
        out += number_line(vals, r.get("labels") or [str(i) for i in range(len(vals))], math.floor(lo),
                           math.ceil(hi), width, marks=(-3,))
    return out


def trajectory_frames(a) -> list[list[list[tuple[int, int, int]]]]:
    """An x0_trajectory array (frame, channel, row, column) in [-1, 1] as frames of RGB rows (grey images
    repeat their one channel; a value that is not finite is mid grey)."""
    S, C, H, W = a["shape"]
    data = a["data"]

    def level(x: float) -> int:
        return 128 if not finite(x) else int(round((min(max(x, -1.0), 1.0) + 1) * 127.5))

    frames = []
    for s in range(S):
        base = s * C * H * W
        frames.append([[tuple(level(data[base + (c if C >= 3 else 0) * H * W + r * W + x]) for c in range(3))
                        for x in range(W)] for r in range(H)])
    return frames


def draw_trajectory(ev: Internals, width: int, color: bool) -> list[Text]:
    """The frames of one sampling trajectory side by side, as many to a row as fit: half-block pixels in colour
    (two image rows a line), else a glyph per pair of rows by brightness; each frame titled with its label."""
    a = ev.array("x0_trajectory")
    if a is None or len(a["shape"]) != 4:
        return [Text("x0_trajectory: needs (frame, channel, row, column)", DIM)]
    S, _, H, W = a["shape"]
    labels = a.get("labels") or [str(s) for s in range(S)]
    out = [Text("x̂0 at steps of one DDIM trajectory, pure noise (left) to the sample (right)", "bold")]
    blocks = []
    for frame, label in zip(trajectory_frames(a), labels):
        lines = [Text(label[:max(W, 1)], DIM)]
        for r in range(0, H, 2):
            top, bottom = frame[r], frame[r + 1] if r + 1 < H else None
            line = Text()
            for x in range(W):
                if color:
                    fg, bg = top[x], (bottom[x] if bottom is not None else top[x])
                    line.append("▀", Style(color="rgb({},{},{})".format(*fg), bgcolor="rgb({},{},{})".format(*bg)))
                else:
                    lum = (sum(top[x]) + sum(bottom[x] if bottom is not None else top[x])) / (6 * 255)
                    line.append(RAMP[min(int(lum * len(RAMP)), len(RAMP) - 1)])
            lines.append(line)
        blocks.append(lines)
    per_row = max(1, width // (W + 1))
    for k in range(0, len(blocks), per_row):
        out += side_by_side(blocks[k:k + per_row], gap=1)
    return out


def draw_cross_attention(ev: Internals, width: int, color: bool) -> list[Text]:
    """For each caption token, the image's patch grid coloured by how much each patch reads that token (one
    scale for all: 0 to the largest weight), titled with the token; as many tokens to a row as fit."""
    a = ev.array("cross_attention")
    if a is None or len(a["shape"]) != 2:
        return [Text("cross_attention: needs (patch, token)", DIM)]
    P, K = a["shape"]
    side = math.isqrt(P)
    if side * side != P:
        return draw_generic("cross_attention")(ev, width, color)
    toks = _tokens(ev, K)
    scale = Scale(0.0, max((x for x in a["data"] if finite(x)), default=1.0) or 1.0)
    cw = 1 if color else 2   # square patches: half blocks put two rows in a line; glyphs one
    blocks = []
    for k in range(K):
        rows = [[a["data"][(r * side + c) * K + k] for c in range(side)] for r in range(side)]
        title = "start" if toks[k] == "<start>" else f"'{toks[k]}'"
        blocks.append([Text(title[:side * cw], "bold")] + heatmap(rows, scale, color, cw))
    out = [Text("how much each image patch (the grid) reads each caption token, the last block's heads "
                "averaged", "bold")]
    per_row = max(1, width // (side * cw + 1))
    for k in range(0, len(blocks), per_row):
        out += side_by_side(blocks[k:k + per_row], gap=1)
    out.append(color_key(scale, color, "attention weight", width))
    return out


def draw_generic(name: str) -> Callable[[Internals, int, bool], list[Text]]:
    def draw(ev: Internals, width: int, color: bool) -> list[Text]:
        a = ev.array(name)
        shape = a["shape"]
        if len(shape) == 1:
            return bars(a["data"], a.get("labels") or [str(i) for i in range(shape[0])], width)
        if len(shape) == 2:
            rows = matrix(a["data"], shape[0], shape[1])
            return heatmap(rows, span(a["data"]), color)
        return [Text.assemble((f"{name}: an array of shape {shape}", DIM))]
    return draw


VIEWS = (
    View("attention", ("attention",), "each row is a query token reading the earlier ones: look for heads that "
         "attend to the previous token, to the first, or (sort) to the digit that comes next", draw_maps),
    View("retention", ("retention",), "each head's scores fade with distance at its own γ: the first heads look "
         "a few tokens back, the last ones far; blue negative, red positive",
         lambda ev, w, c: draw_maps(ev, w, c, "retention")),
    View("logit lens", ("logit_lens",), "what each layer would predict next: early layers guess frequent tokens, "
         "the answer settles in the later ones", draw_lens),
    View("experts", ("expert", "expert_load", "router_entropy"), "the text coloured by its expert: a healthy router "
         "gives similar tokens the same expert and spreads the load", draw_experts),
    View("expert load over probes", ("expert_load",), "each expert's share of the load at every probe so far: "
         "watch it even out towards 1/E, or an expert go dark as the router abandons it", draw_load_history,
         history=True),
    View("dropped tokens", ("dropped",), "token-choices over their expert's capacity keep only their residual: "
         "many drops mean the router crowds a few experts", draw_dropped),
    View("selectivity", ("delta", "exp_delta_A", "A"), "a large Δ resets the state to this token, a small one "
         "keeps the past: watch spaces and punctuation stand out as Mamba learns", draw_selectivity),
    View("decay", ("decay",), "each head's memory: decays near 1 keep long context, near 0 only the "
         "last tokens; watch the heads spread apart as RWKV learns", draw_decay),
    View("state", ("state_norm",), "how much each layer's state holds: it grows as tokens are written in and "
         "levels off where the decay forgets as fast; a norm that keeps climbing never forgets", draw_state),
    View("token shift", ("token_shift", "token_shift_dd"), "how much of the previous token each projection "
         "mixes in: μ as learned, and Finch's ddlerp moving it token by token", draw_token_shift),
    View("ternary weights", ("w_over_gamma", "flip_share"), "mass piled at ±0.5 is weights about to change their "
         "ternary value; flips should fall as training settles", draw_ternary),
    View("activation outliers", ("act_outliers",), "a channel far above the median takes the 8-bit absmax scale "
         "for itself and leaves the others a few levels: watch for the same channel index layer after layer",
         draw_outliers),
    View("denoising", ("x0_trajectory",), "the network's guess of the clean image at each step of one sampling "
         "run: the layout settles in the first noisy steps, the details in the last", draw_trajectory),
    View("cross-attention", ("cross_attention",), "each caption token's grid shows where in the image it is "
         "read: a trained model lights up the strokes for the digit's word and leaves 'the' dark",
         draw_cross_attention),
    View("loss by timestep", ("loss_by_t",), "the noise levels the network has learned: the loss is highest at small "
         "t, where the noise is hard to tell from the image", draw_loss_by_t),
    View("adapters", ("lora_sv", "lora_overlap"), "ΔW has at most rank r: the singular values past it stay 0; a "
         "small share inside W0's top directions means the adapter amplifies what W0 did not emphasise", draw_adapters),
    View("gradients & updates", ("grad_norm", "update_ratio"), "update ratios near -3 mean a good learning rate; "
         "far above, the weights churn; far below, they hardly move", draw_updates),
)
KNOWN = {name for v in VIEWS for name in v.arrays} | {"gamma"}


def views_of(ev: Internals) -> list[View]:
    """The views an event has arrays for, then one per array no view knows (drawn plainly)."""
    names = {a["name"] for a in ev.arrays}
    out = [v for v in VIEWS if names & set(v.arrays)]
    seen = set()
    for a in ev.arrays:
        if a["name"] not in KNOWN and a["name"] not in seen:
            seen.add(a["name"])
            out.append(View(a["name"], (a["name"],), "an array this cockpit does not know how to explain",
                            draw_generic(a["name"])))
    return out


def draw_view(view: View, ev: Internals, width: int, color: bool, probes: list[Internals] | None = None) -> list[Text]:
    """A view's lines; `probes`, the run's probes up to `ev` (oldest first, `ev` the last), for the views that
    draw a history (ev alone when not given). A malformed array (shapes and labels are validated, but not their
    meaning) draws as a note instead of failing."""
    try:
        if view.history:
            return view.draw(ev, width, color, probes if probes else [ev])
        return view.draw(ev, width, color)
    except (IndexError, KeyError, TypeError, ValueError, ZeroDivisionError, OverflowError) as e:
        return [Text(f"(cannot draw {view.title}: {type(e).__name__})", DIM)]


def headline(ev: Internals) -> str:
    parts = [f"internals at step {ev.step}"]
    if ev.arch:
        parts.append(f"arch {ev.arch}")
    if ev.probe:
        parts.append(f"probe: {ev.probe}")
    return " · ".join(parts)


def report_lines(ev: Internals, width: int, color: bool, probes: list[Internals] | None = None) -> list[Text]:
    """Every view of one event, each under its title and caption: what `cockpit --replay` prints (`probes`: the
    run's probes up to it, for the views of a history)."""
    out = [Text(headline(ev), "bold")]
    if ev.tokens:
        out.append(Text.assemble(("probe tokens: " + "".join(ev.tokens)[:width - 14], DIM)))
    for view in views_of(ev):
        out += [Text(""), Text(f"── {view.title} ", "bold")]
        out += [Text(chunk, "italic") for chunk in textwrap.wrap(view.caption, max(width, 20))]
        out += draw_view(view, ev, width, color, probes)
    return out


# --- heatmaps as images ---------------------------------------------------------------------------------------

MAX_HEATMAPS = 256      # images one probe may give (its arrays hold at most 65,536 numbers: many tiny maps)
CATEGORICAL = {"expert"}  # arrays of categories (an expert's index), coloured as the view colours them


def _file_part(text: str) -> str:
    """A name from the log as part of a file name: letters, digits, `_`, `.` and `-` only, 48 at most."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("._")[:48] or "array"


def _pixel(x, scale: Scale, categorical: bool) -> tuple[int, int, int]:
    if not finite(x) or (categorical and abs(x) > 1e9):
        return MISSING_RGB
    return CATEGORIES[int(x) % len(CATEGORIES)] if categorical else lerp_rgb(scale.stops, scale.t(x))


def heatmap_images(ev: Internals) -> tuple[list[tuple[str, np.ndarray]], int]:
    """Every heatmap of a probe as an RGB image, one pixel per value, coloured as the views colour it: each
    array of two axes or more gives one image per entry of its leading axes (a layer's and a head's map), its
    last two axes as rows and columns, named after the array and those entries (`attention-layer0-head1`).
    Attention weights span 0 … 1, retention scores diverge about 0, `expert` takes the category colours and the
    others span their own range. Returns ([(name, (rows, cols, 3) uint8)], how many
    more there were than MAX_HEATMAPS)."""
    import numpy as np

    images, skipped = [], 0
    for a in ev.arrays:
        shape = a["shape"]
        if len(shape) < 2:
            continue
        rows, cols = shape[-2:]
        lead = shape[:-2]
        count = math.prod(lead)
        if len(images) + count > MAX_HEATMAPS:
            skipped += count
            continue
        data, name = a["data"], a["name"]
        scale = Scale(0.0, 1.0) if name == "attention" else span(data, symmetric=name == "retention")
        colors = [_pixel(x, scale, name in CATEGORICAL) for x in data]
        dims = a.get("dims") or [f"axis{i}" for i in range(len(shape))]
        for n, index in enumerate(itertools.product(*map(range, lead))):   # row-major, as the data
            part = "-".join(f"{_file_part(d)}{i}" for d, i in zip(dims, index))
            img = np.array(colors[n * rows * cols:(n + 1) * rows * cols], dtype=np.uint8).reshape(rows, cols, 3)
            images.append((_file_part(name) + (f"-{part}" if part else ""), img))
    return images, skipped
