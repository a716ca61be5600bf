"""`cockpit export RUN_DIR --tensorboard OUT`: a cockpit run as TensorBoard event files, so that
`tensorboard --logdir OUT` shows it (and anything that reads TensorBoard can).

What is written, from the run's folded state (common/state.py), with torch's SummaryWriter (torch and the
tensorboard extra, imported only here):

    train/loss, train/learning_rate, train/grad_norm, train/throughput,
    train/tokens (or train/items)                                        each logged step
    eval/loss and eval/<metric>                                          each eval (accuracy, ...)
    samples (text), samples/image                                        each sample
    the run's identity and config (dotted keys)                          as hparams, in the same file

The tags are the first names common/tfevents.py knows each field by, so the run reads back into the cockpit
the same (`cockpit --replay OUT`). Wall times are the run's own: its start plus the seconds it had trained
by each point (a sample: its event's time).
"""
from __future__ import annotations

import importlib
import json
import math
from pathlib import Path

from common.cli import BadInput, Parser
from common.dotted import NestedTooDeep, flatten
from common.reader import LogError, ReadStats, check_log
from common.state import RunState, load_state
from common.tfevents import EVAL_PREFIX, EXTRA, SCALAR_FIELDS, event_files, scalar_field

TEXT_TAG = "samples"
IMAGE_TAG = "samples/image"
IDENTITY = ("run_id", "preset", "arch", "task", "n_params", "device", "profile", "unit", "max_steps")
# read back as the run_start's own fields: common/tfevents.py IDENTITY


def tag(field: str) -> str:
    """The tag a field of our events is written under (the first of its names in SCALAR_FIELDS)."""
    return SCALAR_FIELDS[field][0]


def metric_tag(name: str) -> str:
    """An eval metric's tag: eval/<name>, unless that would read back as one of the named fields."""
    t = EVAL_PREFIX + name
    return t if scalar_field(t) is None else f"{EVAL_PREFIX}metrics/{name}"


def add_arguments(p: Parser) -> None:
    p.add_argument("run", metavar="RUN_DIR", help="a run directory (or its events.jsonl)")
    p.add_argument("--tensorboard", metavar="OUT", required=True,
                   help="the directory to write TensorBoard event files into (created; it must hold none yet); "
                        "then `tensorboard --logdir OUT`")


def main(argv: list[str], parser: Parser) -> int:
    a = parser.parse_args(argv)
    print(export(a.run, a.tensorboard))
    return 0


def summary_writer():
    """torch's SummaryWriter class; BadInput naming the extra when tensorboard is missing."""
    try:
        return importlib.import_module("torch.utils.tensorboard").SummaryWriter
    except ImportError:
        raise BadInput(f"writing TensorBoard files needs the tensorboard extra: {EXTRA}") from None


def export(run: str | Path, out: str | Path) -> Path:
    """Write the run at `run` into the directory `out`; returns the event file written."""
    log = check_log(run)
    s = load_state(log, ReadStats())
    if not s.counts.get("run_start") and not len(s.train):
        raise LogError(f"{log}: has no run in it (no run_start, no step); nothing to export")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise BadInput(f"--tensorboard {out}: is a file; pass a directory to write the event files into")
    if event_files(out):
        raise BadInput(f"--tensorboard {out}: already holds TensorBoard event files; pass an empty or new "
                       "directory (a second export beside them would show every point twice)")
    writer_class = summary_writer()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise BadInput(f"--tensorboard {out}: cannot create it ({e.strerror}); pass a writable directory") from None
    writer = writer_class(log_dir=str(out))
    try:
        entries, tags = run_entries(s)
        write_hparams(writer, s, tags)     # first: a reader takes them as the run's config at its start
        write_entries(writer, entries)
    finally:
        writer.close()
    return event_files(out)[-1]


def _wall(s: RunState, elapsed: float) -> float | None:
    return s.start_time + elapsed if s.start_time is not None else None


def run_entries(s: RunState) -> tuple[list, list[str]]:
    """Every point and sample of the run in the order to write them, a step at a time (its train scalars,
    its eval scalars, its samples: as a trainer logs them, which readers that group a step's scalars rely
    on); and the scalar tags among them."""
    entries: list[tuple] = []   # (step, train 0 / eval 1 / sample 2, order, what)
    tags: list[str] = []

    def curve(rank: int, name: str, steps, values, times, keep_nan: bool = False):
        points = [(st, v, t) for st, v, t in zip(steps, values, times) if keep_nan or math.isfinite(v)]
        for step, value, t in points:
            entries.append((step, rank, len(entries), (name, value, _wall(s, t))))
        if points:
            tags.append(name)

    train = s.train
    curve(0, tag("loss"), train.steps, train.values, train.times, keep_nan=True)  # a diverged loss is news
    curve(0, tag("lr"), train.steps, s.lrs, train.times)
    curve(0, tag("grad_norm"), train.steps, s.grad_norms, train.times)
    curve(0, tag("throughput"), train.steps, s.rates, train.times)
    if any(train.units):
        curve(0, tag("items" if s.unit == "items" else "tokens"), train.steps, train.units, train.times)
    curve(1, tag("val_loss"), s.val.steps, s.val.values, s.val.times, keep_nan=True)
    for name, c in s.metrics.items():
        curve(1, metric_tag(name), c.steps, c.values, c.times)
    for ev in s.samples:
        entries.append((ev.step, 2, len(entries), ev))
    entries.sort(key=lambda e: e[:3])
    return entries, tags


def write_entries(writer, entries: list) -> None:
    from cockpit.images import decode_image

    for step, _, _, what in entries:
        if isinstance(what, tuple):
            name, value, wall = what
            writer.add_scalar(name, value, step, walltime=wall)
        elif what.kind == "text":
            writer.add_text(TEXT_TAG, what.text, step, walltime=what.time)
        else:
            writer.add_image(IMAGE_TAG, decode_image(what.image), step, walltime=what.time, dataformats="HWC")


def hparam_values(s: RunState) -> dict:
    """The run's identity and its config's dotted keys, as hparams take them (numbers, strings, booleans)."""
    try:
        config = flatten(s.config) if isinstance(s.config, dict) else {}
    except NestedTooDeep:
        config = {}
    values = {name: getattr(s, name) for name in IDENTITY} | config
    out = {}
    for k, v in values.items():
        if v is None:
            continue
        out[k] = v if isinstance(v, (bool, int, float, str)) else json.dumps(v, default=str)
    return out


def write_hparams(writer, s: RunState, metrics: list[str]) -> None:
    """The config as hparams in the run's own file (SummaryWriter.add_hparams would start a second run in a
    subdirectory); the HPARAMS tab takes the metrics' values from the scalars written."""
    from torch.utils.tensorboard.summary import hparams

    for summary in hparams(hparam_values(s), {name: 0.0 for name in metrics}):
        writer.file_writer.add_summary(summary, walltime=s.start_time)
