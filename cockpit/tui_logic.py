"""Pure logic behind the TUI: everything the screens and widgets compute, testable without a terminal.

No Textual and no torch here; numpy (imported where needed: the picker's first frame does not wait for it)
and the standard library only. The widgets call these functions with a
RunState (common/state.py) and draw what comes back.
"""
from __future__ import annotations

import difflib
import math
import shlex
import time
from pathlib import Path

from common.fmt import fmt_bytes, fmt_count, fmt_duration, fmt_loss, fmt_rate

SMOOTHING_LEVELS = (0.0, 0.6, 0.8, 0.9, 0.95, 0.99)
X_AXES = ("step", "tokens", "time")
X_LABELS = {"step": "step", "tokens": "tokens", "time": "seconds"}
TICK_S = 0.25            # how often a screen folds new events and redraws (one render per tick)


def cycle(seq, current):
    """The element after `current` in `seq` (wrapping); the first one when `current` is not in it."""
    seq = tuple(seq)
    try:
        return seq[(seq.index(current) + 1) % len(seq)]
    except ValueError:
        return seq[0]


# --- presets (the picker) ----------------------------------------------------------------------------

def preset_stubs() -> list[dict]:
    """Name, arch, task and description of every preset, read from the YAML files (fast: no torch, no
    model building). The measured facts (params, est. VRAM, profile here) arrive later from presets_info."""
    from trainers import config

    out = []
    for name in config.preset_names():
        info = {"name": name, "arch": "?", "task": "?", "description": "", "vram_budget_gb": 12.0}
        try:
            raw = config.read_yaml(config.preset_path(name))
            info.update(arch=str(raw.get("arch", "?")), task=str(raw.get("task", "?")),
                        description=str(raw.get("description") or ""),
                        vram_budget_gb=float(raw.get("vram_budget_gb", 12.0)))
        except (config.ConfigError, TypeError, ValueError) as e:
            info["error"] = str(e)
        out.append(info)
    return out


def merge_infos(stubs: list[dict], measured: list[dict]) -> list[dict]:
    """The stubs, each updated with its measured facts (matched by name); measured-only presets appended."""
    by_name = {m.get("name"): m for m in measured}
    out = [{**s, **by_name.pop(s["name"], {})} for s in stubs]
    return out + list(by_name.values())


def filter_presets(infos: list[dict], query: str) -> list[dict]:
    """Presets whose name, arch, task or description contain every word of `query` (any case); those
    matching by name come first, then by arch or task, then by description only (so `nano` puts nanogpt
    on top even though other descriptions mention nanoGPT)."""
    words = query.lower().split()
    if not words:
        return list(infos)

    def text(i, keys):
        return " ".join(str(i.get(k, "")) for k in keys).lower()

    def rank(i):
        if all(w in text(i, ("name",)) for w in words):
            return 0
        return 1 if all(w in text(i, ("name", "arch", "task")) for w in words) else 2
    hits = [i for i in infos if all(w in text(i, ("name", "arch", "task", "description")) for w in words)]
    return sorted(hits, key=rank)


def vram_fits(info: dict) -> bool | None:
    est = info.get("est_vram_bytes")
    if not isinstance(est, (int, float)):
        return None
    return est <= float(info.get("vram_budget_gb", 12.0)) * 2**30


def preset_cells(info: dict, measuring: bool = False) -> list[str]:
    """[preset, arch, params, est. VRAM / budget, profile here] as text."""
    pending = "…" if measuring else "?"
    params = fmt_count(info["n_params"]) if isinstance(info.get("n_params"), int) else pending
    budget = f"{float(info.get('vram_budget_gb', 12.0)):g} GB"
    if isinstance(info.get("est_vram_bytes"), (int, float)):
        vram = f"{fmt_bytes(info['est_vram_bytes'])} / {budget}"
    else:
        vram = f"{'n/a' if info.get('error') and not measuring else pending} / {budget}"
    return [str(info.get("name")), str(info.get("arch", "?")), params, vram,
            str(info.get("profile_here", pending))]


def parse_overrides_text(text: str) -> list[str]:
    """`train.max_steps=50 data.path="my file.txt"` -> ["train.max_steps=50", "data.path=my file.txt"]."""
    try:
        return shlex.split(text)
    except ValueError as e:
        from trainers.config import ConfigError

        raise ConfigError(f"overrides: {e}; close the quote") from None


def validate_overrides(preset: str, text: str) -> tuple[list[str], str | None, dict | None]:
    """(overrides, error line or None, resolved config or None), validated by trainers.config.load."""
    from trainers.config import ConfigError, load

    try:
        items = parse_overrides_text(text)
        return items, None, load(preset, items)
    except ConfigError as e:
        return [], str(e).splitlines()[0] if str(e) else "invalid overrides", None


# --- drawing helpers -----------------------------------------------------------------------------------

_EIGHTHS = " ▏▎▍▌▋▊▉█"
_SPARK = "▁▂▃▄▅▆▇█"


def hbar(frac: float, width: int) -> str:
    """A horizontal bar `width` cells wide filled to `frac` (0..1) with eighth-block precision."""
    if width <= 0:
        return ""
    if frac is None or not math.isfinite(frac):
        frac = 0.0
    frac = min(max(frac, 0.0), 1.0)
    eighths = int(round(frac * width * 8))
    full, rem = divmod(eighths, 8)
    s = "█" * full + (_EIGHTHS[rem] if rem and full < width else "")
    return s.ljust(width)


def sparkline(values, width: int, lo: float | None = None, hi: float | None = None) -> str:
    """The last `width` values as ▁..█ (None/NaN as a space); scale lo..hi (default: the values' range)."""
    vals = list(values)[-width:] if width > 0 else []
    finite = [v for v in vals if v is not None and math.isfinite(v)]
    if not finite:
        return " " * len(vals)
    lo = min(finite) if lo is None else lo
    hi = max(finite) if hi is None else hi
    span = hi - lo
    out = []
    for v in vals:
        if v is None or not math.isfinite(v):
            out.append(" ")
        else:
            k = 0 if span <= 0 else int((min(max(v, lo), hi) - lo) / span * (len(_SPARK) - 1) + 0.5)
            out.append(_SPARK[k])
    return "".join(out)


# --- the status line -----------------------------------------------------------------------------------

STATE_STYLE = {"running": "green", "paused": "yellow", "completed": "bold green", "stopped": "yellow",
               "failed": "bold red", "killed": "red", "waiting": "dim", "stopping": "yellow",
               "starting": "dim"}


def status_fields(s, note: str | None = None) -> list[tuple[str, str]]:
    """(label, value) pairs of the status line: step/max, loss, lr, rate, elapsed, ETA, state."""
    unit = "tok/s" if s.unit == "tokens" else "it/s"
    lr = f"{s.lr:.2e}" if isinstance(s.lr, float) and math.isfinite(s.lr) else "-"
    state = note or s.status
    if s.exit_code not in (None, 0) and s.status in ("failed", "killed", "stopped"):
        state += f" (exit {s.exit_code})"
    return [
        ("", state),
        ("step", f"{s.step}/{s.max_steps or '?'}"),
        ("loss", fmt_loss(s.loss)),
        ("val", fmt_loss(s.val.values[-1]) if len(s.val) else "-"),
        ("lr", lr),
        (unit, fmt_rate(s.throughput)),
        ("elapsed", fmt_duration(s.elapsed if len(s.train) else None)),
        ("ETA", fmt_duration(s.eta())),
    ]


# --- redraw pacing (a live run shares the CPU with its trainer) ------------------------------------------

# Share of one core a live run screen may spend rendering its heavy panes. A CPU run's threads take every
# core, and each millisecond the UI runs stalls them (a preempted OpenMP thread holds up its whole team),
# so the UI stays frugal there; a GPU run's trainer mostly waits on the GPU and leaves the CPU to the UI.
REDRAW_BUDGET = {"cpu": 0.003, "gpu": 0.02}
REDRAW_MIN_S = 1.0     # ... but never more often than this, nor less often than REDRAW_MAX_S
REDRAW_MAX_S = 5.0
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
    them costs about REDRAW_BUDGET of a core: on a CPU run panes that take 13 ms together redraw every
    4.3 s; on a GPU run every REDRAW_MIN_S."""
    budget = REDRAW_BUDGET[_device_kind(device)]
    if render_seconds is None or not math.isfinite(render_seconds) or render_seconds <= 0:
        return REDRAW_MIN_S
    return min(REDRAW_MAX_S, max(REDRAW_MIN_S, render_seconds / budget))


def pane_signatures(s, note: str | None = None) -> dict[str, tuple]:
    """What each run-screen pane draws from, as a cheap hashable: a pane redraws only when its own changed
    (a system sample must not re-render the loss chart)."""
    seen = s.counts
    return {
        "loss": (len(s.train), len(s.val), len(s.checkpoints), len(s.skipped_steps), len(s.throttle_steps),
                 len(s.resumes), s.out_of_order, s.run_id, s.n_params, s.device, s.profile, s.world_size),
        "samples": (seen.get("sample", 0),),
        "memory": (seen.get("memory", 0), seen.get("run_start", 0)),
        "gpu": (seen.get("system", 0),),
        "error": (s.status, s.error, s.exit_code),
        "status": tuple(status_fields(s, note)),   # the state word is among the fields
    }


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


def run_title(s) -> str:
    """`nanogpt · gpt · 0.81M params · cpu (cpu profile)`."""
    parts = [s.preset or "run", s.arch or "?"]
    if s.n_params is not None:
        parts.append(f"{fmt_count(s.n_params)} params")
    if s.device:
        parts.append(f"{s.device}" + (f" ({s.profile} profile)" if s.profile else ""))
    if s.world_size > 1:
        parts.append(f"{s.world_size} ranks")
    return " · ".join(parts)


# --- memory --------------------------------------------------------------------------------------------

def budget_bytes(s) -> int:
    if s.memory and isinstance(s.memory.get("budget_bytes"), (int, float)):
        return int(s.memory["budget_bytes"])
    gb = s.config.get("vram_budget_gb") if isinstance(s.config, dict) else None
    return int(float(gb if isinstance(gb, (int, float)) else 12.0) * 2**30)


def memory_rows(s) -> tuple[list[tuple[str, int, int]], list[tuple[str, int | None]], int]:
    """(layers [(name, activation_bytes, param_bytes)], totals [(label, bytes)], budget bytes)."""
    if not s.memory:
        return [], [], budget_bytes(s)
    layers = []
    for l in s.memory.get("layers") or []:
        if isinstance(l, dict):
            a = l.get("activation_bytes")
            p = l.get("param_bytes")
            layers.append((str(l.get("name", "?")), int(a) if isinstance(a, (int, float)) else 0,
                           int(p) if isinstance(p, (int, float)) else 0))
    t = s.memory.get("totals") or {}
    totals = [(label, t.get(key) if isinstance(t.get(key), (int, float)) else None)
              for key, label in (("params", "params"), ("grads", "grads"), ("optimizer", "optimizer"),
                                 ("activations", "activations"), ("peak_allocated", "peak alloc"))]
    return layers, totals, budget_bytes(s)


def pack_words(parts: list[str], width: int, sep: str = " ") -> list[str]:
    """Join `parts` with `sep` into lines of at most `width` columns, breaking only between parts (a part
    longer than the width gets a line of its own)."""
    lines: list[str] = []
    for p in parts:
        if lines and len(lines[-1]) + len(sep) + len(p) <= width:
            lines[-1] += sep + p
        else:
            lines.append(p)
    return lines or [""]


def short_layer_name(name: str, width: int) -> str:
    """`transformer.h.11.attn` -> `h.11.attn` when it does not fit; keep the informative tail."""
    if len(name) <= width:
        return name
    parts = name.split(".")
    while len(parts) > 1 and len(".".join(parts)) > width:
        parts.pop(0)
    tail = ".".join(parts)
    return tail if len(tail) <= width else "…" + tail[-(width - 1):]


# --- the GPU / system pane -----------------------------------------------------------------------------

def gpu_summary(s) -> dict:
    """What the GPU pane shows: {'gpus': [...]} or {'no_gpu': reason, 'cpu': {...}}; {} before any event."""
    ev = s.system
    if not ev:
        return {}
    gpus = [g for g in (ev.get("gpus") or []) if isinstance(g, dict)]
    out: dict = {"cpu": ev.get("cpu") if isinstance(ev.get("cpu"), dict) else {}}
    if gpus:
        out["gpus"] = gpus
    else:
        out["no_gpu"] = str(ev.get("nvml") or "NVML unavailable")
    return out


def throttle_text(reasons) -> str:
    if not reasons:
        return "none"
    if isinstance(reasons, str):
        return reasons
    return ", ".join(str(r) for r in reasons)


def nice_ticks(lo: float, hi: float, n: int = 5, integer: bool = False) -> list[float]:
    """About n round tick values (1, 2, 2.5 or 5 times a power of ten) covering [lo, hi]; `integer` keeps
    them whole numbers (steps, tokens)."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or n < 2:
        return []
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / (n - 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10, 20)
                if m * mag >= raw * 0.7 and (not integer or float(m * mag).is_integer()))
    first = math.ceil(lo / step - 1e-9) * step
    ticks = []
    t = first
    while t <= hi + step * 1e-9:
        ticks.append(round(t, 12))
        t += step
    return ticks


def tick_label(x: float, axis: str) -> str:
    """Short tick text: 1500 -> '1500' (steps), 51200 -> '51.2k' (tokens), 90 -> '1:30' (seconds)."""
    if axis == "time":
        return fmt_duration(x)
    if axis == "tokens":
        for unit, div in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
            if abs(x) >= div:
                return f"{x / div:.4g}{unit}"
    return f"{x:.0f}" if float(x).is_integer() else f"{x:g}"


# --- markers on the loss chart ---------------------------------------------------------------------------

MARKERS = {  # kind -> (legend label, character, colour)
    "checkpoint": ("checkpoint", "C", "green"),
    "eval": ("eval", "E", "orange"),
    "lr": ("lr phase", "L", "magenta"),
    "skipped": ("skipped step", "S", "red"),
    "throttle": ("GPU throttle", "T", "red"),
    "resume": ("resume", "R", "cyan"),
}


def lr_phase_changes(steps, lrs, rel_tol: float = 1e-6) -> list[tuple[int, str]]:
    """Steps where the learning-rate schedule changes direction: warm-up end, decay end, restarts.
    Returns (step, label) with label in {'warm-up end', 'decay end', 'lr up', 'lr down', 'lr flat'}."""
    import numpy as np

    n = min(len(steps), len(lrs))
    if n < 3:
        return []
    st = np.asarray(steps[-n:], dtype=np.int64)
    lr = np.asarray([v if v is not None else np.nan for v in lrs[-n:]], dtype=np.float64)
    ok = np.isfinite(lr)
    st, lr = st[ok], lr[ok]
    if lr.size < 3:
        return []
    d = np.diff(lr)
    tol = rel_tol * max(float(np.max(np.abs(lr))), 1e-30)
    sign = np.where(d > tol, 1, np.where(d < -tol, -1, 0))
    change = np.nonzero(sign[1:] != sign[:-1])[0] + 1
    out = []
    for i in change.tolist():
        prev, cur = int(sign[i - 1]), int(sign[i])
        if prev == 1 and cur in (-1, 0):
            label = "warm-up end"
        elif prev == -1 and cur == 0:
            label = "decay end"
        else:
            label = {1: "lr up", -1: "lr down", 0: "lr flat"}[cur]
        out.append((int(st[i]), label))
    return out


def marker_steps(s) -> dict[str, list[int]]:
    """Steps of each marker kind, from the RunState."""
    return {
        "checkpoint": [st for st, _ in s.checkpoints],
        "eval": list(s.val.steps),
        "lr": [st for st, _ in lr_phase_changes(s.train.steps, s.lrs)],
        "skipped": list(s.skipped_steps),
        "throttle": list(s.throttle_steps),
        "resume": list(s.resumes),
    }


def steps_to_x(curve, steps, axis: str) -> np.ndarray:
    """Map steps to the x of `axis` (tokens, seconds) through the train curve (nearest logged step)."""
    import numpy as np

    steps = np.asarray(steps, dtype=np.float64)
    if axis == "step" or len(curve) == 0 or steps.size == 0:
        return steps
    cs = np.asarray(curve.steps, dtype=np.float64)
    cx = np.asarray(curve.x(axis), dtype=np.float64)
    idx = np.clip(np.searchsorted(cs, steps), 0, len(cs) - 1)
    return cx[idx]


# --- smoothing with a cache (a live run re-draws 4 times a second) ---------------------------------------

class GrowingArray:
    """A float64 numpy view of a growing Python list, extended in place (capacity doubling): a redraw after
    k new points converts k values, not all n. `epoch` must change when earlier entries may have changed
    (a resumed run replacing points: RunState.out_of_order, len(RunState.resumes))."""

    def __init__(self):
        import numpy as np

        self.buf = np.empty(0)
        self.n = 0
        self.epoch = None

    def get(self, values, epoch=None) -> np.ndarray:
        import numpy as np

        n = len(values)
        if epoch != self.epoch or n < self.n:
            self.n, self.epoch = 0, epoch
        if n > self.n:
            if n > self.buf.size:
                grown = np.empty(max(n, 2 * self.buf.size, 1024))
                grown[:self.n] = self.buf[:self.n]
                self.buf = grown
            self.buf[self.n:n] = np.fromiter(values[self.n:n], dtype=np.float64, count=n - self.n)
            self.n = n
        return self.buf[:n]


class SmoothCache:
    """The EMA of a growing series, extended incrementally: the same numbers as cockpit.series.ema, but a
    redraw after k new points costs O(k), not O(n). A series that shrank or changed is recomputed."""

    def __init__(self):
        import numpy as np

        self.strength = None
        self.n = 0
        self.acc = 0.0
        self.weight = 0.0
        self.buf = np.empty(0)
        self.last = None
        self.epoch = None

    def get(self, values, strength: float, epoch=None) -> np.ndarray:
        """`values`: a list or 1-D array; `epoch` changes whenever earlier points may have been replaced."""
        import numpy as np

        n = len(values)
        if strength <= 0:
            return np.asarray(values, dtype=np.float64)
        tail_same = self.n and n >= self.n and self.last == values[self.n - 1] and epoch == self.epoch
        if strength != self.strength or not tail_same:
            self.strength, self.n, self.acc, self.weight = strength, 0, 0.0, 0.0
            self.epoch = epoch
        if n > self.n:
            a = float(min(strength, 0.999))
            new = values[self.n:n]
            new = new.tolist() if isinstance(new, np.ndarray) else new
            ext = []
            append = ext.append
            acc, weight = self.acc, self.weight
            for v in new:
                if v - v != 0.0:       # NaN or inf: passed through, the average carries on
                    append(v)
                    continue
                acc = a * acc + (1 - a) * v
                weight = a * weight + (1 - a)
                append(acc / weight)
            self.acc, self.weight = acc, weight
            if n > self.buf.size:
                grown = np.empty(max(n, 2 * self.buf.size, 1024))
                grown[:self.n] = self.buf[:self.n]
                self.buf = grown
            self.buf[self.n:n] = ext
            self.n = n
            self.last = values[n - 1]
        return self.buf[:n]


def series_for_plot(x, y, width: int, smoothing: float = 0.0, log_y: bool = False,
                    cache: SmoothCache | None = None, epoch=None):
    """(xs, ys) ready to draw: EMA on the full data, then min/max buckets (2 per column) keep spikes.
    x and y: lists or arrays (GrowingArray views avoid re-converting a long list on every redraw)."""
    import numpy as np

    from cockpit.series import downsample_minmax, ema

    ys = cache.get(y, smoothing, epoch) if cache is not None else ema(y, smoothing)
    xs = np.asarray(x, dtype=np.float64)
    if xs.size != ys.size:
        m = min(xs.size, ys.size)
        xs, ys = xs[:m], ys[:m]
    if log_y:
        ok = ys > 0
        xs, ys = xs[ok], ys[ok]
    return downsample_minmax(xs, ys, max(1, width))


# --- samples -------------------------------------------------------------------------------------------

def sample_heading(ev: dict, index: int, count: int) -> str:
    kind = "image" if ev.get("kind") == "image" else "text"
    head = f"{kind} sample {index + 1}/{count} @ step {ev.get('step')}"
    prompt = ev.get("prompt")
    if isinstance(prompt, str) and prompt.strip():
        p = prompt.strip().replace("\n", "⏎")
        head += f" · prompt {p[:40]!r}"
    if ev.get("kind") == "image" and ev.get("classes") is not None:
        cls = ev["classes"]
        head += " · classes " + (" ".join(map(str, cls)) if isinstance(cls, list) else str(cls))
    return head


def _shrink_cell(cell: np.ndarray, f: int) -> np.ndarray:
    import numpy as np

    if f <= 1:
        return cell
    h, w = cell.shape[0] // f * f, cell.shape[1] // f * f
    blocks = cell[:h, :w].reshape(h // f, f, w // f, f, -1).astype(np.float32)
    return blocks.mean(axis=(1, 3)).round().astype(np.uint8)


def fit_grid(img: np.ndarray, grid: dict | None, max_w: int, max_h: int) -> np.ndarray:
    """Re-tile a sample grid to fit max_w x max_h pixels (a half-block cell is 1 x 2 pixels).

    A diffusion sample is `rows` samples per class column, `cols` columns side by side; a terminal pane is
    narrower than that. Each class column is kept whole and the columns reflow onto several lines; cells are
    box-averaged by the smallest integer factor that makes the whole fit. Without grid metadata (or when it
    does not match the image) the image is only shrunk to max_w."""
    import numpy as np

    if img.ndim == 2:
        img = img[..., None]
    H0, W0 = img.shape[:2]
    try:
        rows, cols = int(grid["rows"]), int(grid["cols"])
        ch, cw, pad = int(grid["cell_h"]), int(grid["cell_w"]), int(grid.get("pad", 0))
        ok = rows * (ch + pad) - pad == H0 and cols * (cw + pad) - pad == W0 and rows > 0 and cols > 0
    except (TypeError, KeyError, ValueError):
        ok = False
    if not ok:
        f = max(1, -(-W0 // max(1, max_w)))
        return _shrink_cell(img, f)
    pad_value = img[0, cw] if cols > 1 and pad else (img[ch, 0] if rows > 1 and pad else img[0, 0] * 0)
    columns = [img[:, j * (cw + pad):j * (cw + pad) + cw] for j in range(cols)]
    best = None
    for f in range(1, max(ch, cw) + 1):
        h1, w1 = ch // f, cw // f
        if h1 < 1 or w1 < 1:
            break
        per_line = max(1, (max_w + pad) // (w1 + pad))
        lines = -(-cols // per_line)
        col_h = rows * (h1 + pad) - pad
        total_h = lines * (col_h + pad) - pad
        total_w = min(cols, per_line) * (w1 + pad) - pad
        best = (f, per_line, lines, col_h, total_h, total_w)
        if total_w <= max_w and total_h <= max_h:
            break
    f, per_line, lines, col_h, total_h, total_w = best
    out = np.empty((total_h, total_w, img.shape[2]), dtype=np.uint8)
    out[...] = pad_value
    h1, w1 = ch // f, cw // f
    for j, column in enumerate(columns):
        line, pos = divmod(j, per_line)
        y0, x0 = line * (col_h + pad), pos * (w1 + pad)
        for i in range(rows):
            cell = _shrink_cell(column[i * (ch + pad):i * (ch + pad) + ch], f)
            out[y0 + i * (h1 + pad):y0 + i * (h1 + pad) + h1, x0:x0 + w1] = cell[:h1, :w1]
    return out


def same_prompt_indices(samples: list[dict], prompt) -> list[int]:
    """Indices of text samples with the given prompt, oldest first."""
    return [i for i, ev in enumerate(samples) if ev.get("kind") == "text" and ev.get("prompt") == prompt]


def diff_pair_default(samples: list[dict]) -> tuple[int, int] | None:
    """The default pair for the sample diff: the earliest and the latest text sample with the latest
    sample's prompt; None when fewer than two such samples exist."""
    texts = [i for i, ev in enumerate(samples) if ev.get("kind") == "text"]
    if not texts:
        return None
    same = same_prompt_indices(samples, samples[texts[-1]].get("prompt"))
    return (same[0], same[-1]) if len(same) >= 2 else None


def word_diff(a: str, b: str) -> list[tuple[str, str]]:
    """b split into (chunk, tag) with tag 'same' or 'new' against a (word level, whitespace kept)."""
    import re

    wa = re.findall(r"\S+|\s+", a)
    wb = re.findall(r"\S+|\s+", b)
    out = []
    sm = difflib.SequenceMatcher(a=wa, b=wb, autojunk=False)
    for op, _i1, _i2, j1, j2 in sm.get_opcodes():
        if j2 > j1:
            out.append(("".join(wb[j1:j2]), "same" if op == "equal" else "new"))
    return out


# --- the trainer process's output ------------------------------------------------------------------------

def tail_text(path: str | Path, max_lines: int = 40, max_bytes: int = 32768) -> str:
    """The last lines of a text file ('' when missing); used when a trainer died before writing run_end."""
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            data = f.read()
    except OSError:
        return ""
    lines = data.decode("utf-8", "replace").splitlines()
    if size > max_bytes and lines:
        lines = lines[1:]
    return "\n".join(lines[-max_lines:])


def failure_event(state, exit_code: int | None, out_path: Path | None) -> dict:
    """A run_end for a trainer that died without writing one: the exit code and its output's tail."""
    tail = tail_text(out_path) if out_path is not None else ""
    where = f"; last lines of {out_path}:\n{tail}" if tail else (f"; {out_path} is empty" if out_path else "")
    how = f"exit code {exit_code}" if exit_code is not None and exit_code >= 0 else \
        f"signal {-exit_code}" if exit_code is not None else "unknown exit"
    return {"v": 1, "type": "run_end", "time": state.last_time or 0.0, "status": "failed", "step": state.step,
            "metrics": {}, "error": f"the trainer ended ({how}) without writing run_end{where}",
            "exit_code": exit_code if exit_code is not None else 1, "synthetic": True}
