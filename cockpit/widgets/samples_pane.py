"""The samples pane: the latest generated sample with its step, scrollable back through earlier ones;
image samples (diffusion presets) drawn with half-block characters in true colour (cockpit/images.py);
and the sample diff: the same prompt's output at two chosen steps side by side, new words highlighted."""
from __future__ import annotations

import difflib
import re

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.widget import Widget
from textual.widgets import Static

from common.events import Sample


def sample_heading(ev: Sample, index: int, count: int) -> str:
    head = f"{ev.kind} sample {index + 1}/{count} @ step {ev.step}"
    if ev.prompt and ev.prompt.strip():
        p = ev.prompt.strip().replace("\n", "⏎")
        head += f" · prompt {p[:40]!r}"
    if ev.kind == "image" and ev.classes is not None:
        head += " · classes " + " ".join(map(str, ev.classes))
    return head


def same_prompt_indices(samples: list[Sample], prompt) -> list[int]:
    """Indices of text samples with the given prompt, oldest first."""
    return [i for i, ev in enumerate(samples) if ev.kind == "text" and ev.prompt == prompt]


def diff_pair_default(samples: list[Sample]) -> tuple[int, int] | None:
    """The default pair for the sample diff: the earliest and the latest text sample with the latest
    sample's prompt; None when fewer than two such samples exist."""
    texts = [i for i, ev in enumerate(samples) if ev.kind == "text"]
    if not texts:
        return None
    same = same_prompt_indices(samples, samples[texts[-1]].prompt)
    return (same[0], same[-1]) if len(same) >= 2 else None


# words (and the spaces between them) of each side the diff compares: matching costs grow with their product, a
# sample is a few dozen to a few hundred; the rest of a longer one is shown without marks ("unchecked")
DIFF_WORDS = 400


# characters of a sample the pane lays out: a sample is a few hundred, and laying out megabytes would freeze
# the screen
SHOWN_CHARS = 20_000


def shown_text(text: str | None) -> str:
    """A sample's text as the pane shows it: whole, or its first SHOWN_CHARS characters and how many more."""
    text = text or ""
    if len(text) <= SHOWN_CHARS:
        return text
    return f"{text[:SHOWN_CHARS]}\n… {len(text) - SHOWN_CHARS} more characters"


def word_diff(a: str, b: str) -> list[tuple[str, str]]:
    """b split into (chunk, tag) with tag 'same' or 'new' against a (word level, whitespace kept); past
    DIFF_WORDS, 'unchecked'."""
    wa = re.findall(r"\S+|\s+", a)[:DIFF_WORDS]
    wb = re.findall(r"\S+|\s+", b)
    wb, rest = wb[:DIFF_WORDS], wb[DIFF_WORDS:]
    out = []
    sm = difflib.SequenceMatcher(a=wa, b=wb, autojunk=False)
    for op, _i1, _i2, j1, j2 in sm.get_opcodes():
        if j2 > j1:
            out.append(("".join(wb[j1:j2]), "same" if op == "equal" else "new"))
    if rest:
        out.append(("".join(rest), "unchecked"))
    return out


def render_image(ev: Sample, width: int, height: int):
    """A Rich renderable of an image sample fitted to width x height cells (class columns of a sample grid
    reflow onto several lines), or a one-line reason it cannot be drawn."""
    try:
        from cockpit import images
    except ImportError as e:
        return Text(f"(cannot draw image samples: cockpit.images is not available: {e})", style="yellow")
    try:
        img = images.decode_image(ev.image)
        fitted = images.fit_grid(img, ev.grid, max(4, width), max(2, 2 * height))
        return images.halfblock(fitted)
    except Exception as e:  # noqa: BLE001 — a malformed payload must not take the UI down
        return Text(f"(image sample could not be decoded: {type(e).__name__}: {e})", style="red")


def when_samples_come(state) -> str:
    """When the trainer writes samples (trainers/loop.py): with each eval, and every train.sample_interval."""
    train = (getattr(state, "config", None) or {}).get("train") or {}
    every, evals = train.get("sample_interval"), train.get("eval_interval")
    parts = []
    if isinstance(every, int) and every > 0:
        parts.append(f"every {every} steps")
    parts.append(f"at each eval (every {evals})" if isinstance(evals, int) and evals > 0 else "at each eval")
    return " and ".join(parts)


class SamplesPane(Widget):
    DEFAULT_CSS = """
    SamplesPane { height: 1fr; width: 1fr; }
    SamplesPane > #sample-heading { height: 1; color: $text-muted; }
    SamplesPane > VerticalScroll { height: 1fr; scrollbar-size-vertical: 1; }
    SamplesPane #sample-body { width: 1fr; }
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.state = None
        self.index: int | None = None          # None: follow the latest sample
        self.diff: tuple[int, int] | None = None
        self._count = -1
        self._shown_key = None
        self._image_cache: dict[int, object] = {}

    def compose(self) -> ComposeResult:
        yield Static("no samples yet", id="sample-heading")
        with VerticalScroll():
            yield Static("", id="sample-body")

    # --- navigation ----------------------------------------------------------------------------------
    @property
    def samples(self) -> list:
        return self.state.samples if self.state is not None else []

    def current_index(self) -> int | None:
        n = len(self.samples)
        if not n:
            return None
        return n - 1 if self.index is None else min(self.index, n - 1)

    def step_back(self):
        i = self.current_index()
        if self.diff is not None:
            self._move_diff(0, -1)
        elif i is not None:
            self.index = max(0, i - 1)
            self._redraw()

    def step_forward(self):
        i = self.current_index()
        if self.diff is not None:
            self._move_diff(0, +1)
        elif i is not None:
            self.index = None if i + 1 >= len(self.samples) - 1 else i + 1
            self._redraw()

    def latest(self):
        self.index = None
        self._redraw()

    def toggle_diff(self) -> str | None:
        """Side by side on/off; returns why not when there is no pair with the same prompt."""
        if self.diff is not None:
            self.diff = None
            self._redraw()
            return None
        i = self.current_index()
        pair = None
        if i is not None and self.samples[i].kind == "text":
            same = same_prompt_indices(self.samples, self.samples[i].prompt)
            if len(same) >= 2:
                pair = (same[0], i) if same[0] != i else (i, same[-1])
        pair = pair or diff_pair_default(self.samples)
        if pair is None:
            return "the sample diff needs two text samples with the same prompt"
        self.diff = pair
        self._redraw()
        return None

    def move_diff_right(self, delta: int):
        if self.diff is not None:
            self._move_diff(1, delta)

    def _move_diff(self, side: int, delta: int):
        a, b = self.diff
        same = same_prompt_indices(self.samples, self.samples[a].prompt)
        cur = (a, b)[side]
        pos = same.index(cur) if cur in same else 0
        pos = min(max(pos + delta, 0), len(same) - 1)
        new = list(self.diff)
        new[side] = same[pos]
        self.diff = (new[0], new[1])
        self._redraw()

    # --- drawing -------------------------------------------------------------------------------------
    def on_resize(self, _event):
        self._redraw()

    pane, heavy = "samples", False

    @staticmethod
    def signature(s, note=None) -> tuple:
        # sample events folded so far, not len(samples): the list is capped, its length stops changing
        return (s.counts.get("sample", 0),)

    def update_state(self, state, note: str | None = None):
        self.state = state
        # sample events folded so far, not len(samples): the list is capped, its length stops changing
        count = state.counts.get("sample", len(state.samples))
        if count != self._count:
            self._count = count
            self._redraw()

    def _redraw(self):
        if not self.is_mounted:
            return
        heading = self.query_one("#sample-heading", Static)
        body = self.query_one("#sample-body", Static)
        n = len(self.samples)
        if not n:
            heading.update(f"no samples yet: {when_samples_come(self.state)}", layout=False)
            body.update("")
            return
        if self.diff is not None:
            a, b = self.diff
            ea, eb = self.samples[a], self.samples[b]
            heading.update(Text(f"sample diff · step {ea.step} vs step {eb.step} "
                                f"(same prompt; new words highlighted)", style="bold"), layout=False)
            grid = Table.grid(expand=True, padding=(0, 1))
            grid.add_column(ratio=1, overflow="fold")
            grid.add_column(ratio=1, overflow="fold")
            left = Text(f"step {ea.step}\n", style="bold")
            left.append(shown_text(ea.text))
            right = Text(f"step {eb.step}\n", style="bold")
            for chunk, tag in word_diff(shown_text(ea.text), shown_text(eb.text)):
                right.append(chunk, style="black on green" if tag == "new" and chunk.strip() else "")
            grid.add_row(left, right)
            body.update(grid)
            return
        i = self.current_index()
        ev = self.samples[i]
        head = Text(sample_heading(ev, i, n), style="bold")
        if self.index is not None:
            head.append("  ([ older, ] newer)", style="dim")
        heading.update(head, layout=False)   # one row, fixed: no layout pass for it
        if ev.kind == "image":
            w, h = max(4, self.size.width - 1), max(2, self.size.height - 1)
            key = (id(ev), w, h)
            if key not in self._image_cache:
                if len(self._image_cache) > 64:
                    self._image_cache.clear()
                self._image_cache[key] = render_image(ev, w, h)
            body.update(self._image_cache[key])
        else:
            body.update(Text(shown_text(ev.text)))
