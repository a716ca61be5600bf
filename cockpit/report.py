"""The headless report of a recorded run (`cockpit --replay FILE`): no TUI, no TTY, no torch.

Summary, the loss chart (cockpit/compare.py's, of one run), the last samples, the per-layer activation-memory
table and the system summary, all built from the same RunState the TUI renders.
"""
from __future__ import annotations

import errno
import shutil
import textwrap
from pathlib import Path

from cockpit.ansi import use_color
from cockpit.compare import compare_chart
from common.cli import BadInput
from common.fmt import fmt_bytes, fmt_count, fmt_duration, fmt_loss, fmt_rate
from common.reader import ReadStats
from common.state import RunState


def _table(rows: list[list[str]], header: list[str], align: str | None = None) -> list[str]:
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    align = align or "l" + "r" * (len(header) - 1)

    def line(r):
        return "  ".join(str(c).ljust(w) if a == "l" else str(c).rjust(w) for c, w, a in zip(r, widths, align))
    return [line(header), "  ".join("-" * w for w in widths)] + [line(r) for r in rows]


def summary_lines(s: RunState, path: str, stats: ReadStats | None) -> list[str]:
    unit = "tok" if s.unit == "tokens" else "it"
    final_val = s.val.values[-1] if len(s.val) else None
    out = [
        f"run      {s.run_id or '?'}  ({path})",
        f"preset   {s.preset or '?'}  arch {s.arch or '?'}  task {s.task or '?'}  profile {s.profile or '?'}",
        f"params   {fmt_count(s.n_params)}  device {s.device or '?'}" + (f"  ranks {s.world_size}" if s.world_size > 1 else ""),
        f"steps    {s.step}/{s.max_steps or '?'}  status {s.status}"
        + (f"  exit code {s.exit_code}" if s.exit_code not in (None, 0) else ""),
        f"loss     train {fmt_loss(s.loss)}  best val {fmt_loss(s.best_val)}"
        + (f" @ {s.best_val_step}" if s.best_val_step is not None else "") + f"  final val {fmt_loss(final_val)}",
        f"speed    {fmt_rate(s.mean_throughput())} {unit}/s  wall {fmt_duration(s.wall_time())}",
    ]
    metrics = metrics_line(s)
    if metrics:
        out += textwrap.wrap(metrics, 120, initial_indent="metrics  ", subsequent_indent=" " * 9)
    if s.resumes:
        out.append(f"resumed  from step {', '.join(map(str, s.resumes))}")
    if s.status == "killed":
        out.append("ended    without run_end: the trainer was killed (resume with `cockpit train PRESET --resume RUN_DIR`)")
    notes = []
    if stats is not None and stats.summary():
        notes.append(stats.summary())
    if s.bad_events:
        notes.append(f"ignored {s.bad_events} events with missing or mistyped fields")
    if s.unknown_types:
        notes.append("ignored unknown event types: " + ", ".join(f"{k} ({v})" for k, v in s.unknown_types.items()))
    if s.out_of_order:
        notes.append(f"{s.out_of_order} steps out of order (later points replaced)")
    for n in notes:
        out.append(f"note     {n}")
    return out


def metrics_line(s: RunState) -> str:
    """The latest value of every metric the run charts (lr, grad norm, throughput, each eval metric), in the
    metrics grid's order."""
    from cockpit.metrics import fmt_value, run_series

    return "  ".join(f"{x.title} {fmt_value(x.last(), x.key, x.unit)}" for x in run_series(s))


def memory_lines(s: RunState) -> list[str]:
    if not s.memory:
        return ["(no memory events)"]
    m = s.memory
    total_act = sum(l.get("activation_bytes", 0) for l in m.layers)
    rows = []
    for l in m.layers:
        a = l.get("activation_bytes", 0)
        pct = f"{100 * a / total_act:.1f}%" if total_act else "-"
        rows.append([str(l.get("name")), fmt_bytes(a), pct, fmt_bytes(l.get("param_bytes"))])
    out = [f"per-layer activation memory at step {m.step} (bytes saved for backward, measured)"]
    out += _table(rows, ["layer", "activations", "share", "params"])
    t = m.totals
    parts = [f"{k} {fmt_bytes(t.get(k))}" for k in ("params", "grads", "optimizer", "activations", "peak_allocated")
             if t.get(k) is not None]
    if t.get("trainable_params") is not None:
        parts.append(f"trainable {fmt_count(t['trainable_params'])} params")
    out.append("totals   " + "  ".join(parts))
    comp = m.comparison
    if comp:
        rows = []
        for r in comp:
            if r.get("error"):
                rows.append([str(r.get("method")), r["error"][:60], "", "", "", "", ""])
                continue
            mark = " *" if r.get("method") == m.method else ""
            rows.append([f"{r.get('method')}{mark}", fmt_count(r.get("trainable_params")), fmt_bytes(r.get("params")),
                         fmt_bytes(r.get("grads")), fmt_bytes(r.get("optimizer")), fmt_bytes(r.get("activations")),
                         fmt_bytes(r.get("total"))])
        out.append("")
        out.append("fine-tuning memory compared (measured; * = this run)")
        out += _table(rows, ["method", "trainable", "params", "grads", "optimizer", "activations", "total"])
        if m.comparison_note:
            out.append(m.comparison_note)
    return out


def system_lines(s: RunState) -> list[str]:
    ev = s.system
    if not ev:
        return ["(no system events)"]
    out = []
    for g in ev.gpus or []:
        mem = f"{fmt_bytes(g.get('mem_used'))}/{fmt_bytes(g.get('mem_total'))}"
        out.append(f"GPU {g.get('index')} {g.get('name')}: {g.get('temp_c')} C, util {g.get('util_pct')}%, "
                   f"VRAM {mem}, power {g.get('power_w')} W, throttle {', '.join(g.get('throttle') or []) or 'none'}")
    if not ev.gpus:
        out.append(f"no NVIDIA GPU ({ev.nvml or 'NVML unavailable'}); CPU instead:")
    cpu = ev.cpu or {}
    if cpu:
        hist = [u for u in s.cpu_util_history if u is not None]
        mean = f", mean {sum(hist) / len(hist):.0f}% over {len(hist)} samples" if hist else ""
        out.append(f"CPU util {cpu.get('util_pct')}%{mean}; trainer RSS {fmt_bytes(cpu.get('rss'))}; "
                   f"RAM {fmt_bytes(cpu.get('ram_used'))}/{fmt_bytes(cpu.get('ram_total'))}")
    return out


def experts_lines(s: RunState) -> list[str]:
    e = s.experts
    if not e:
        return []
    counts = e.get("counts") or []
    total = sum(counts) or 1
    dropped = e.get("dropped")
    out = [f"experts  balance loss {fmt_loss(e.get('balance_loss'))}, dropped tokens "
           f"{fmt_count(dropped) if dropped is not None else '-'}"]
    for i, c in enumerate(counts):
        out.append(f"  expert {i}: {'#' * int(40 * c / total):<40} {c}")
    return out


def sample_lines(s: RunState, n: int, color: bool, images_dir: Path | None) -> list[str]:
    out = []
    for ev in s.samples[-n:]:
        if ev.kind == "text":
            prompt = ev.prompt or ""
            out.append(f"--- sample @ step {ev.step}" + (f" (prompt {prompt!r})" if prompt.strip() else ""))
            out.extend(ev.text.rstrip("\n").splitlines()[:20])
        else:
            out.append(f"--- image sample @ step {ev.step} ({ev.sampler or ''})"
                       + (f" classes {ev.classes}" if ev.classes is not None else ""))
            from cockpit import images

            img = images.decode_image(ev.image)
            if images_dir is not None:
                p = images_dir / f"sample-{ev.step}.png"
                save_image(images, p, img)
                out.append(f"saved {p}")
            if color:
                out.append(_ansi(images, img))
            elif images_dir is None:
                out.append("(colour terminal needed to draw it; --images saves it as PNG)")
    return out or ["(no samples)"]


# why a PNG could not be written that the user can fix by choosing another place (exit 2); anything else (a
# full disk, an I/O error) is a failure to write, exit 1 (cockpit/cli.py main)
_PLACE_ERRORS = (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.EEXIST)


def save_image(images, path: Path, img) -> None:
    """`--images`: one image as a PNG in the run's directory or the one given (written whole or not at all)."""
    try:
        images.write_png(path, images.upscale(img))
    except OSError as e:
        if e.errno in _PLACE_ERRORS:
            raise BadInput(f"--images: cannot write {path} ({e.strerror}); give a writable directory "
                           "(`--images DIR`)") from None
        raise OSError(e.errno, e.strerror, str(path)) from None  # named: cockpit/cli.py main says which file


def _ansi(images, img) -> str:
    from rich.console import Console

    console = Console(force_terminal=True, color_system="truecolor", width=shutil.get_terminal_size().columns)
    with console.capture() as cap:  # columns past the terminal's edge are cut: never drawn at all
        console.print(images.halfblock(img[:, :console.width]))
    return cap.get().rstrip("\n")


def internals_text(s: RunState, width: int, color: bool, images_dir: Path | None = None) -> str:
    """The most recent internals probe, every view of it as text heatmaps, bars and number lines
    (cockpit/internals.py); with images_dir, its heatmaps saved there as PNGs too."""
    from rich.console import Console

    from cockpit.internals import report_lines

    console = Console(force_terminal=color, color_system="truecolor" if color else None, width=width,
                      no_color=not color, highlight=False)
    with console.capture() as cap:
        for line in report_lines(s.internals[-1], width, color, list(s.internals)):
            console.print(line, overflow="crop", no_wrap=True)
    note = f"({len(s.internals)} probes recorded; the internals view, `i` on the run screen, steps through them)"
    out = cap.get().rstrip("\n") + "\n" + note
    if images_dir is not None:
        out += "\n" + "\n".join(save_heatmaps(s.internals[-1], images_dir))
    return out


def save_heatmaps(ev, images_dir: Path) -> list[str]:
    """`--images`: each heatmap of a probe (cockpit/internals.py heatmap_images) as a PNG, its pixels enlarged
    to squares (images.upscale), named `internals-STEP-ARRAY[-AXIS#...].png`."""
    from cockpit import images
    from cockpit.internals import MAX_HEATMAPS, heatmap_images

    maps, skipped = heatmap_images(ev)
    for name, img in maps:
        save_image(images, images_dir / f"internals-{ev.step}-{name}.png", img)
    out = [f"saved {len(maps)} internals heatmaps of step {ev.step} as {images_dir / f'internals-{ev.step}-*.png'}"]
    if skipped:
        out.append(f"(and not the other {skipped}: at most {MAX_HEATMAPS} a probe)")
    return out


def kernel_lines(s: RunState) -> list[str]:
    if not s.kernels:
        return []
    rows = []
    for ev in s.kernels.values():
        rows.append([ev.name, str(ev.shape), str(ev.dtype), "ok" if ev.ok else "FAIL",
                     f"{ev.max_abs_err:.2e}" if ev.max_abs_err is not None else "-",
                     str(ev.torch_ms), str(ev.triton_ms)])
    return ["kernels"] + _table(rows, ["kernel", "shape", "dtype", "ok", "max err", "torch ms", "triton ms"], "lllllrr")


def report(path: str, state: RunState, stats: ReadStats | None, *, color: bool | None = None,
           images_dir: Path | None = None, samples: int = 3, x_axis: str = "step", smoothing: float = 0.0) -> str:
    color = use_color() if color is None else color
    width = max(60, min(shutil.get_terminal_size((100, 30)).columns, 140))
    parts = ["\n".join(summary_lines(state, path, stats)), "",
             compare_chart([(state.preset or "run", state)], width=width - 2, height=18, color=color,
                           x_axis=x_axis, smoothing=smoothing), "",
             "\n".join(sample_lines(state, samples, color, images_dir)), "",
             "\n".join(memory_lines(state)), ""]
    if state.experts:
        parts += ["\n".join(experts_lines(state)), ""]
    if state.kernels:
        parts += ["\n".join(kernel_lines(state)), ""]
    if state.internals:
        parts += [internals_text(state, width, color, images_dir), ""]
    parts.append("\n".join(system_lines(state)))
    if state.error:
        parts += ["", "error:", state.error.rstrip()]
    return "\n".join(parts) + "\n"
