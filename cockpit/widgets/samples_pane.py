"""The samples pane: the latest generated sample with its step, scrollable back through earlier ones;
image samples (diffusion presets) drawn with half-block characters in true colour (cockpit/images.py);
the sample diff: the same prompt's output at two chosen steps side by side, new words highlighted; and the
sample shown saved to the run directory (w) or copied to the clipboard (y)."""
from __future__ import annotations

import difflib
import re
from pathlib import Path

from rich.cells import cell_len
from rich.console import Group
from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.widget import Widget
from textual.widgets import Static

from common.events import Sample


def clip_words(text: str, width: int) -> str:
    """`text` in at most `width` cells: whole, or its first words that fit and an ellipsis; "" when not even
    the first word fits."""
    if cell_len(text) <= width:
        return text
    words = text.split(" ")
    kept = ""
    for word in words:
        longer = f"{kept} {word}" if kept else word
        if cell_len(longer.rstrip(" ,;:·")) + 1 > width:
            break
        kept = longer
    return kept.rstrip(" ,;:·") + "…" if kept.strip() else ""


# fewer cells than this left for a prompt: leave it out rather than show a stub of it
MIN_PROMPT_CELLS = 8


def first_that_fits(variants: list[Text], width: int) -> Text:
    """The first of `variants` (most to least complete) that fits `width` cells; the last one cropped if none."""
    for text in variants:
        if text.cell_len <= width:
            return text
    last = variants[-1].copy()
    last.truncate(max(1, width), overflow="ellipsis")
    return last


def sample_heading(ev: Sample, index: int, count: int, width: int, browsing: bool = False) -> Text:
    """The one-row heading of a sample, fitted to `width` cells: which sample (kind, position, step), the
    browsing keys while an older one is shown, and what it was generated from in the room left. Shortened by
    priority (the keys' words, then the kind), never cut mid-word."""
    where = f"{index + 1}/{count} @ step {ev.step}"
    cores = [f"{ev.kind} sample {where}", f"sample {where}", where]
    hints = ["  ([ older, ] newer)", "  ([ ])", ""] if browsing else [""]
    about = (ev.prompt or "").strip().replace("\n", "⏎").replace("\t", " ")
    frame = "prompt '{}'" if ev.kind == "text" else "{}"   # an image's prompt describes its sampler
    variants = []
    for core in cores:
        for hint in hints:
            head = Text(core, style="bold")
            room = width - cell_len(core) - cell_len(hint) - len(" · ") - len(frame.format(""))
            shown = clip_words(about, room) if room >= MIN_PROMPT_CELLS else ""
            if shown:
                head.append(" · " + frame.format(shown))
            head.append(hint, style="dim")
            variants.append(head)
    return first_that_fits(variants, width)


def diff_heading(step_a: int, step_b: int, width: int) -> Text:
    """The sample diff's heading fitted to `width` cells, shortened by priority."""
    steps = f"step {step_a} vs step {step_b}"
    return first_that_fits([Text(t, style="bold") for t in (
        f"sample diff · {steps} (same prompt; new words highlighted)",
        f"sample diff · {steps} (new words highlighted)",
        f"sample diff · {steps}",
        f"diff · {steps}",
        steps,
        f"{step_a} vs {step_b}")], width)


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


def fit_label(name: str, width: int) -> str:
    """`name` centred in `width` cells, or cut to them with an ellipsis."""
    while cell_len(name) > width:
        name = name[:-2] + "…" if len(name) > 1 else ""
    return " " * ((width - cell_len(name)) // 2) + name + " " * ((width - cell_len(name) + 1) // 2)


def class_labels(classes: list, tiling: dict | None, width: int) -> tuple[Text | None, Text | None]:
    """(the row above a sample grid naming each column's class, the legend below it): the names themselves
    over their columns when they fit, or cut to them while they stay tell-apart (at least 3 letters and the
    ellipsis); else column numbers over the columns and a legend of the names; without a tiling (no grid
    metadata) only a legend."""
    names = [str(c) for c in classes]
    if len(set(names)) == 1:
        legend = Text("every column: " + names[0], style="dim")
        head = ""
    else:
        head, names = common_words(names)   # prompts "the digit zero" .. "the digit nine": "the digit …" once
        legend = Text((f"{head} …: " if head else "classes: ") + ", ".join(names), style="dim")
    if tiling is None or len(names) != tiling["cols"]:
        return None, legend
    cw, gap = tiling["cell_w"], " " * tiling["pad"]
    cut = [fit_label(n, cw) for n in names]
    lead = Text(f"{head} …", style="dim") if head else None
    if all(cell_len(n) <= cw for n in names) or (cw >= 4 and len(set(cut)) == len(set(names))):
        return Text(gap.join(cut), style="bold", no_wrap=True, overflow="crop"), lead
    numbers = [str(j + 1) for j in range(len(names))]
    if cell_len(numbers[-1]) > cw:
        return None, legend
    key = Text(packed([f"{k} {n}" for k, n in zip(numbers, names)], width), style="dim")
    if head:
        key = Text(f"{head} …\n", style="dim") + key
    return Text(gap.join(fit_label(k, cw) for k in numbers), style="bold", no_wrap=True, overflow="crop"), key


MIN_COMMON_CHARS = 5   # a shared prefix shorter than this ("a", "the") stays in every label


def common_words(names: list[str]) -> tuple[str, list[str]]:
    """(the words every name starts with, each name without them): said once instead of in every column.
    Nothing is taken when a name would be left empty, nor a prefix too short to be worth a line ("a")."""
    split = [n.split(" ") for n in names]
    k = 0
    while all(len(w) > k + 1 for w in split) and len({tuple(w[:k + 1]) for w in split}) == 1:
        k += 1
    head = " ".join(split[0][:k])
    if len(head) < MIN_COMMON_CHARS:
        return "", list(names)
    return head, [" ".join(w[k:]) for w in split]


def packed(entries: list[str], width: int, sep: str = "  ") -> str:
    """`entries` on as few lines of `width` cells as they fill, none split across two."""
    lines = [""]
    for entry in entries:
        joined = f"{lines[-1]}{sep}{entry}" if lines[-1] else entry
        if cell_len(joined) <= width or not lines[-1]:
            lines[-1] = joined
        else:
            lines.append(entry)
    return "\n".join(lines)


def lines_of(text: Text | None, width: int) -> int:
    """Rows a Text takes in `width` cells, wrapped (0 for none)."""
    return 0 if text is None else sum(-(-max(1, cell_len(line)) // max(1, width)) for line in text.plain.split("\n"))


def caption_line(caption: str | None) -> Text | None:
    """The caption a text-to-image grid was generated from, quoted, over the grid (wrapped, never cut)."""
    if not caption:
        return None
    return Text.assemble(("prompt ", "dim"), (f"“{caption}”", "bold"))


def render_image(ev: Sample, width: int, height: int):
    """A Rich renderable of an image sample fitted to width x height cells: the caption it was generated from
    (text-to-image) above the grid, the grid scaled down with its rows and columns kept, each column labelled
    with its class (or prompt); or a one-line reason it cannot be drawn."""
    try:
        from cockpit import images
    except ImportError as e:
        return Text(f"(cannot draw image samples: cockpit.images is not available: {e})", style="yellow")
    try:
        img = images.decode_image(ev.image)
        classes = ev.classes or []
        caption = caption_line(ev.caption)
        above = lines_of(caption, width)
        reserved = above + (1 if classes else 0)   # the caption, the label row
        for _ in range(2):   # a legend under the grid takes rows from it: fit again, smaller
            fitted, tiling = images.fit_grid(img, ev.grid, max(4, width), max(2, 2 * (height - reserved)))
            top, legend = class_labels(classes, tiling, width) if classes else (None, None)
            if above + lines_of(top, width) + lines_of(legend, width) <= reserved:
                break
            reserved = above + lines_of(top, width) + lines_of(legend, width)
        parts = (caption, top, images.halfblock(fitted), legend)
        return Group(*(part for part in parts if part is not None))
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

    # --- keeping a sample ----------------------------------------------------------------------------
    def shown(self) -> list[int]:
        """Indices of the samples on screen: the diff's two sides, or the one shown."""
        if self.diff is not None:
            return list(self.diff)
        i = self.current_index()
        return [] if i is None else [i]

    def sample_path(self, run_dir: Path, i: int) -> Path:
        """Where `w` saves sample i: sample-STEP.txt or .png in the run directory (as `--images` names its
        PNGs), numbered -1, -2 ... in log order when the run wrote several at that step (one per prompt)."""
        ev = self.samples[i]
        same_step = [j for j, other in enumerate(self.samples) if other.step == ev.step]
        number = f"-{same_step.index(i) + 1}" if len(same_step) > 1 else ""
        return Path(run_dir) / f"sample-{ev.step}{number}.{'png' if ev.kind == 'image' else 'txt'}"

    def save_shown(self, run_dir: Path) -> list[Path]:
        """Write the samples on screen into `run_dir` (text as it was generated; an image grid as a PNG, its
        columns labelled with their classes) and say where; the paths written."""
        from common.atomic import write_atomic
        from common.cli import BadInput

        shown = self.shown()
        if not shown:
            self.notify("no sample to save yet", severity="warning")
            return []
        saved = []
        for i in shown:
            ev, path = self.samples[i], self.sample_path(run_dir, i)
            try:
                if ev.kind == "image":
                    from cockpit import images

                    images.write_png(path, images.labelled_grid(images.decode_image(ev.image), ev.grid,
                                                                ev.classes))
                else:
                    write_atomic(path, ev.text)
            except (OSError, ValueError, BadInput) as e:
                self.notify(f"could not save {path}: {e}", severity="error", markup=False)
                return saved
            saved.append(path)
        self.notify("saved " + " and ".join(map(str, saved)), markup=False)
        return saved

    def copy_shown(self) -> str | None:
        """Put the text sample on screen (the diff's right side) on the clipboard by OSC 52, which terminals
        that allow it pass to the system clipboard; the text copied."""
        shown = self.shown()
        if not shown:
            self.notify("no sample to copy yet", severity="warning")
            return None
        ev = self.samples[shown[-1]]
        if ev.kind != "text":
            self.notify("an image sample cannot be copied as text: w saves it as a PNG", severity="warning")
            return None
        self.app.copy_to_clipboard(ev.text)
        self.notify(f"copied the step {ev.step} sample ({len(ev.text)} characters) to the clipboard, where the "
                    "terminal allows it (OSC 52); w saves it to a file", markup=False)
        return ev.text

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
            heading.update(diff_heading(ea.step, eb.step, self.size.width), layout=False)
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
        head = sample_heading(ev, i, n, self.size.width, browsing=self.index is not None)
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
            body.update(self._text_with_history(i))

    HISTORY = 4   # earlier samples shown under the latest one, dimmed (a tall pane shows the model learning)

    def _text_with_history(self, i: int) -> Text:
        """The text sample i; while following the latest, the earlier samples of the same prompt below it,
        newest first, each under a dim `· step N ·` rule."""
        ev = self.samples[i]
        out = Text(shown_text(ev.text))
        if self.index is not None:
            return out
        earlier = [j for j in same_prompt_indices(self.samples, ev.prompt) if j < i][-self.HISTORY:]
        for j in reversed(earlier):
            out.append(f"\n\n· step {self.samples[j].step} ·\n", style="bold dim")
            out.append(shown_text(self.samples[j].text), style="dim")
        return out
