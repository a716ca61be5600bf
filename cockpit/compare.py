"""Comparing runs: one overlaid loss chart and one table (`cockpit --replay A B C`, and the TUI's compare
screen, which reuses the pure functions here).

    compare_report(loaded)       the headless comparison: chart of every run's train and val loss, a legend
                                 (preset and run id), then ONE table: identity, best val, tokens/s, peak
                                 memory and each config key whose value differs between the runs
    compare_rows(states)         that table as rows of text cells; rows[0] is the header
    fit_rows(rows, width)        those rows cut to a width (the TUI's table): labels and names in the middle
    run_label(state)             "<preset> <run id without the preset prefix>", the legend and column title
    peak_memory(state)           (bytes, kind): the CUDA allocator's peak, or on CPU the measured sum of
                                 activations + params + grads + optimizer state
    diff_rows(states)            the config-difference rows alone
    config_diff(configs)         the dotted config keys whose values differ, with each run's value

No torch, no Textual.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from cockpit.ansi import strip_ansi, use_color
from cockpit.series import X_LABELS, build_chart, end_ticks, plot_series, tick_label
from common.dotted import NestedTooDeep, flatten
from common.fmt import fmt_bytes, fmt_count, fmt_duration, fmt_loss, fmt_rate
from common.state import RunState

# one colour (xterm-256) per run: blue, orange, green, pink, yellow, cyan, purple, red
COLORS = [39, 208, 40, 199, 226, 51, 141, 196]
# without colour, runs are told apart by their markers: train line / val points
MARKERS = [("•", "o"), ("+", "#"), ("x", "%"), ("*", "@"), ("-", "="), (":", "&"), ("~", "$"), ("^", "?")]
# config keys that say nothing a row above does not already say
SKIP_KEYS = ("name", "arch", "description")
CELL = 28   # widest table cell before truncation
MIN_CELL = 10   # the narrowest a table column gets to fit a width: narrower says too little, the table scrolls


def config_diff(configs: list[dict | None]) -> dict[str, list]:
    """Dotted keys whose values differ between the configs (a key missing from one counts as None),
    each with the list of values in the configs' order. Keys appear in first-seen order. A config that is
    not a dict, or nests too deeply to compare, counts as empty."""
    flats = [_flat(c) for c in configs]
    keys: dict[str, None] = {}
    for f in flats:
        keys.update(dict.fromkeys(f))
    out = {}
    for k in keys:
        vals = [f.get(k) for f in flats]
        canon = {json.dumps(v, sort_keys=True, default=str) + type(v).__name__ for v in vals}
        if len(canon) > 1:
            out[k] = vals
    return out


def _flat(config) -> dict:
    try:
        return flatten(config) if isinstance(config, dict) else {}
    except NestedTooDeep:
        return {}


def run_label(s: RunState, fallback: str = "run") -> str:
    preset = s.preset or "?"
    rid = s.run_id or fallback
    short = rid[len(preset) + 1:] if rid.startswith(preset + "-") else rid
    return f"{preset} {short}"


def unique_labels(states: list[RunState], paths: list[str] | None = None) -> list[str]:
    labels = [run_label(s, Path(paths[i]).parent.name if paths else f"run{i + 1}") for i, s in enumerate(states)]
    seen: dict[str, int] = {}
    out = []
    for lab in labels:  # the same log given twice: keep the columns apart
        seen[lab] = seen.get(lab, 0) + 1
        out.append(lab if seen[lab] == 1 else f"{lab} ({seen[lab]})")
    return out


def peak_memory(s: RunState) -> tuple[float | None, str]:
    """(bytes, kind): kind "allocator" (CUDA's peak allocated) when measured on a GPU, else "sum" (activations
    saved for backward + params + grads + optimizer state, each measured, at the probes' worst step)."""
    peaks = []
    peaks.append(s.end_metric("peak_allocated"))
    peaks += [t.get("peak_allocated") for _, t in s.memory_history]
    peaks = [p for p in peaks if p is not None]
    if peaks:
        return float(max(peaks)), "allocator"
    sums = []
    for _, t in s.memory_history:
        parts = [t.get(k) for k in ("activations", "params", "grads", "optimizer")]
        parts = [p for p in parts if p is not None]
        if parts:
            sums.append(float(sum(parts)))
    if sums:
        return max(sums), "sum"
    return None, ""


MEMORY_TAG = {"allocator": "CUDA", "sum": "sum"}
MEMORY_NOTES = {
    "allocator": "(CUDA) = the CUDA allocator's peak (torch.cuda.max_memory_allocated)",
    "sum": "(sum) = activations saved for backward + params + grads + optimizer state, measured by the memory probe",
}


def memory_notes(states: list[RunState]) -> list[str]:
    """The footnotes that say what each `peak memory` tag in the table means."""
    kinds = {peak_memory(s)[1] for s in states}
    return [MEMORY_NOTES[k] for k in ("allocator", "sum") if k in kinds]


def _value(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, (int, str)):
        return str(v) if v != "" else '""'
    return json.dumps(v, default=str)


def _cut(text: str, width: int = CELL) -> str:
    text = text.replace("\n", " ")
    return text if len(text) <= width else text[:width - 1] + "…"


def cut_middle(text: str, width: int) -> str:
    """`text` in at most `width` cells, cut in the middle so its start and its distinguishing end stay:
    'nanogpt 20261121-054927-5a93' -> 'nanogpt …054927-5a93' or 'nanogpt …5a93'. A run label's first word
    (the preset) stays whole while there is room for it and four cells of the end."""
    text = text.replace("\n", " ")
    if len(text) <= width:
        return text
    if width < 3:
        return text[:width]
    label = " " in text      # a run's label: the preset, then its run id
    head = text.split(" ", 1)[0] + " " if label else ""
    if not head or len(head) + 5 > width:
        head = text[:(width - 1) // 2]
    tail = text[len(text) - (width - len(head) - 1):]
    dash = tail.find("-")
    if label and 0 <= dash <= len(tail) - 5:   # the id's end from a part's start: '…5a93', not '…27-5a93'
        tail = tail[dash + 1:]
    return head + "…" + tail


def fit_rows(rows: list[list[str]], width: int, padding: int = 2) -> tuple[list[int], list[list[str]]]:
    """compare_rows' rows cut to a table `width` cells wide whose columns each take `padding` cells more
    than their text: every run's column the same width, the names' column no wider than a quarter of the
    table while the runs need the room. Names and run labels are cut in the middle (cut_middle), values at
    their end. Below MIN_CELL a run's column stops shrinking: the table is wider than `width` and
    scrolls. Returns (the columns' text widths, the cut rows)."""
    n = len(rows[0]) - 1
    room = width - padding * (n + 1)
    longest_name = max(len(r[0]) for r in rows)
    widest = max(len(c) for r in rows for c in r[1:])
    names_w = min(longest_name, max(MIN_CELL, width // 4))
    run_w = min(widest, max(MIN_CELL, (room - names_w) // max(n, 1)))
    names_w = max(names_w, min(longest_name, room - n * run_w))
    out = [[""] + [cut_middle(c, run_w) for c in rows[0][1:]]]
    out += [[cut_middle(r[0], names_w)] + [_cut(c, run_w) for c in r[1:]] for r in rows[1:]]
    return [names_w] + [run_w] * n, out


def diff_rows(states: list[RunState]) -> list[list[str]]:
    """[key, value per run] for each dotted config key whose values differ ("-": not in that run's config)."""
    diff = config_diff([s.config for s in states])
    return [[k, *(_cut(_value(v)) for v in vals)] for k, vals in diff.items() if k not in SKIP_KEYS]


def compare_rows(states: list[RunState], paths: list[str] | None = None) -> list[list[str]]:
    """The comparison table as text cells: rows[0] = ["", label per run], then one row per quantity and one
    per differing config key. Every row has len(states) + 1 cells."""
    labels = unique_labels(states, paths)
    rows = [["", *labels]]

    def row(name, cells):
        rows.append([name, *cells])

    row("arch", [s.arch or "?" for s in states])
    row("status", [s.status for s in states])
    row("steps", [f"{s.step}/{s.max_steps}" if s.max_steps else str(s.step) for s in states])
    row("best val loss", [fmt_loss(s.best_val) + (f" @ {s.best_val_step}" if s.best_val_step is not None else "")
                          for s in states])
    row("last train loss", [fmt_loss(s.loss) for s in states])
    units = {s.unit for s in states}
    if len(units) == 1:
        row("tokens/s" if units == {"tokens"} else "items/s", [fmt_rate(s.mean_throughput()) for s in states])
    else:
        row("throughput", [f"{fmt_rate(s.mean_throughput())} {'tok' if s.unit == 'tokens' else 'it'}/s"
                           for s in states])
    row("peak memory", [f"{fmt_bytes(b)} ({MEMORY_TAG[k]})" if b is not None else "-"
                        for b, k in map(peak_memory, states)])
    row("params", [fmt_count(s.n_params) for s in states])
    row("device", [s.device or "?" for s in states])
    row("wall time", [fmt_duration(s.wall_time()) for s in states])
    rows.extend(diff_rows(states))
    return rows


def table_text(rows: list[list[str]], differing_from: int | None = None) -> str:
    """Aligned text of compare_rows' output: names left, values right-aligned under their run."""
    n = len(rows[0])
    widths = [max(len(r[i]) for r in rows) for i in range(n)]
    out = []
    for j, r in enumerate(rows):
        if differing_from is not None and j == differing_from:
            out.append("config differences (keys whose values differ)")
        cells = [r[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(r[1:], widths[1:])]
        out.append("  ".join(cells).rstrip())
        if j == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def compare_chart(runs: list[tuple[str, RunState]], width: int = 100, height: int = 20, color: bool = False,
                  x_axis: str = "step", smoothing: float = 0.0) -> str:
    """Every run's train curve (a line) and val points on one plotext chart, the same smoothing for all,
    then a legend (one line per run: its glyphs or colour, and its label) below the plot so it never hides
    the curves. Without colour each run has its own glyphs, train's and val's different ones. A val point
    is drawn over the train line: it covers one cell and the line stays readable on both sides of it. The
    x ticks are round numbers and the last one is where the longest run ended. x_axis: step, tokens or
    time. The one-run report (cockpit/report.py) draws its chart here too."""
    import plotext as plt

    plt.clear_figure()
    plt.plotsize(width, height)
    plt.theme("pro" if color else "clear")
    if not color:
        plt.clear_color()
    legend = []
    xs_drawn = []
    for i, (label, s) in enumerate(runs):
        train_m, val_m = MARKERS[i % len(MARKERS)]
        c = COLORS[i % len(COLORS)]
        style = {"color": c} if color else {}
        parts = []
        if len(s.train):
            xs, ys = plot_series(s.train.x(x_axis), s.train.values, smoothing, buckets=width)
            if xs.size:
                plt.plot(xs.tolist(), ys.tolist(), marker="braille" if color else train_m, **style)
                xs_drawn.append(xs)
            parts.append(f"{'⣿' if color else train_m * 2} train")
        if len(s.val):
            xs, ys = plot_series(s.val.x(x_axis), s.val.values, 0.0, buckets=width)
            if xs.size:
                plt.scatter(xs.tolist(), ys.tolist(), marker=val_m, **style)
                xs_drawn.append(xs)
            parts.append(f"{val_m} val")
        key = "  ".join(parts) if parts else "(no loss data)"
        if color:
            key = f"\x1b[38;5;{c}m{key}\x1b[0m"
        legend.append(f"  {key:<{len(key) + max(0, 16 - len(strip_ansi(key)))}}  {label}")
    if not any(len(s.train) or len(s.val) for _, s in runs):
        return "(no loss data yet)"
    if xs_drawn:
        lo = min(float(x.min()) for x in xs_drawn)
        hi = max(float(x.max()) for x in xs_drawn)
        ticks = end_ticks(lo, hi, max(3, min(8, width // 14)), integer=x_axis != "time")
        if ticks:
            plt.xticks(ticks, [report_tick(t, x_axis) for t in ticks])
    title = "loss" + (f" (EMA smoothing {smoothing:g})" if smoothing > 0 else "")
    plt.title(title)
    plt.xlabel(X_LABELS[x_axis])
    out = build_chart(plt.build, str)
    if not color:
        out = strip_ansi(out)
    return out.rstrip("\n") + "\n" + "\n".join(legend)


def report_tick(x: float, axis: str) -> str:
    """An x tick of a text report: steps and tokens in full below 100k (a report's chart is wide), beyond
    that as the TUI writes tokens (1.5M); seconds as a duration (1:30)."""
    if axis == "time":
        return tick_label(x, axis)
    return f"{x:.0f}" if abs(x) < 1e5 else tick_label(x, "tokens")


def compare_report(loaded: list[tuple[str, RunState, object]], color: bool | None = None, *,
                   width: int | None = None, x_axis: str = "step", smoothing: float = 0.0) -> str:
    """The headless comparison of several runs: loaded = [(log path, RunState, ReadStats | None), ...]."""
    color = use_color() if color is None else color
    width = width or max(60, min(shutil.get_terminal_size((100, 30)).columns, 140))
    paths = [p for p, _, _ in loaded]
    states = [s for _, s, _ in loaded]
    labels = unique_labels(states, paths)
    rows = compare_rows(states, paths)
    n_fixed = len(rows) - len(diff_rows(states))
    parts = [f"comparing {len(states)} runs (x axis: {x_axis})",
             *(f"  {lab}: {p}" for lab, p in zip(labels, paths)), "",
             compare_chart(list(zip(labels, states)), width=width - 2, height=20, color=color, x_axis=x_axis,
                           smoothing=smoothing), "",
             table_text(rows, differing_from=n_fixed if n_fixed < len(rows) else None)]
    if n_fixed == len(rows):
        parts.append("(the runs' configs are identical)")
    parts += [f"peak memory: {n}" for n in memory_notes(states)]
    notes = []
    for lab, (_, s, stats) in zip(labels, loaded):
        summary = stats.summary() if stats is not None else ""
        if summary:
            notes.append(f"note     {lab}: {summary}")
        if s.bad_events:
            notes.append(f"note     {lab}: ignored {s.bad_events} events with missing or mistyped fields")
        if s.status == "failed" and s.error:
            notes.append(f"note     {lab}: failed: {s.error.strip().splitlines()[0]}")
    if notes:
        parts += [""] + notes
    return "\n".join(parts) + "\n"
