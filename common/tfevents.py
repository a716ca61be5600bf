"""TensorBoard event files read as cockpit events: a run any trainer logged to TensorBoard (Hugging Face's
Trainer, Lightning, torchtitan, a SummaryWriter of one's own) in the run screen, `watch`, `--replay` and the
runs browser. No torch, no Textual; tensorboard (the `.[tensorboard]` extra) only decodes the records.

    tensorboard_run(path)    a TensorBoard run: a directory holding event files (and no events.jsonl), or
                             an event file; None for anything else (cheap: names only)
    check_run(path)          the same, refused with one line when it cannot be read (LogError, MissingExtra)
    TfEventsFollower(path)   `poll()` the new events of a growing run, `finish()`, `stats` (common/reader.py's
                             Follower, for event files)
    load_state(path, stats)  a whole run folded into a RunState (`cockpit --replay DIR`)

The files are TFRecords: a little-endian uint64 length, the masked CRC-32C of those 8 bytes, the record,
the masked CRC-32C of the record. They are framed here, incrementally, so a growing file is followed live
and a torn last record waits for the rest of its bytes. A record whose checksum fails (a damaged file) is
counted as a skipped line, as a damaged JSONL line is; after a damaged length the reader finds the next
intact record.

The mapping (docs/tensorboard.md): scalars known by their common tag names become the `step` event's loss,
lr, grad_norm and throughput, or the `eval` event's val_loss (SCALAR_FIELDS); every other scalar becomes an
eval metric under its own tag, so that it is charted in the metrics grid. The scalars of one step travel
together: a step's events are made once the records of a later step arrive, or once every byte written so
far is read (scalars of a step that come later still, the writer flushing mid-step, are shown with the
earlier ones again: the reducer replaces the point).
Text summaries become text samples, image summaries image samples (their tag as the prompt), log messages
log events; histograms, audio, graphs and hparams have no place in the run screen and are passed over. A
run_start is made up (run id = the directory's name, preset "tensorboard"); the files record no end, so once
their writer is gone (its process, when the file names one of this machine; else no write for QUIET_S) a
synthetic run_end marks the run completed at its last step.
"""
from __future__ import annotations

import base64
import functools
import importlib
import io
import math
import os
import socket
import struct
import time
from pathlib import Path

from common import events as E
from common.cli import BadInput
from common.paths import LOG_NAME
from common.procs import trainer_alive
from common.reader import LogError, ReadStats, check_log
from common.state import RunState, bulk

EXTRA = 'pip install -e ".[tensorboard]"'
MARK = "tfevents"                 # every TensorBoard event file has it in its name
PRESET = "tensorboard"            # the preset of the run_start made up for a TensorBoard run
MAX_RECORD = 64 << 20             # a record longer than this is skipped without being held in memory
MAX_IMAGE_SIDE = 512              # larger images are scaled down to this many pixels on their longer side
QUIET_S = 15 * 60                 # a writer not of this machine is taken as gone after this long without a write
CHUNK = 4 << 20

# Scalar tags -> the field of our events they fill (compared in lower case). The exporter writes the first
# of each (cockpit export --tensorboard), so an exported run reads back the same.
SCALAR_FIELDS = {
    "loss": ("train/loss", "loss", "train_loss", "loss/train", "training_loss", "train_loss_step",
             "loss_metrics/global_avg_loss"),
    "val_loss": ("eval/loss", "eval_loss", "val/loss", "val_loss", "loss/val", "loss/eval", "loss/validation",
                 "validation/loss", "valid/loss"),
    "lr": ("train/learning_rate", "learning_rate", "lr", "train/lr"),
    "grad_norm": ("train/grad_norm", "grad_norm", "gradient_norm", "train/gradient_norm"),
    "throughput": ("train/throughput", "throughput", "tokens_per_second", "train/tokens_per_second",
                   "tokens_per_sec", "train/tokens_per_sec", "samples_per_sec", "train/samples_per_sec", "wps"),
    "tokens": ("train/tokens", "tokens", "train/num_input_tokens_seen", "num_input_tokens_seen"),
    "items": ("train/items", "items"),
}
_FIELD_OF = {tag: name for name, tags in SCALAR_FIELDS.items() for tag in tags}
LR_PREFIX = "lr-"                 # Lightning's LearningRateMonitor: lr-Adam, lr-AdamW ...
EVAL_PREFIX = "eval/"             # the exporter's eval metrics: eval/accuracy ...
TRAIN_FIELDS = ("loss", "lr", "grad_norm", "throughput", "tokens", "items")
TEXT_SUFFIX = "/text_summary"     # SummaryWriter.add_text's tag suffix
LOG_LEVELS = {10: "debug", 20: "info", 30: "warning", 40: "error", 50: "error"}


class MissingExtra(BadInput):
    """tensorboard is not installed: one line naming the extra."""


def event_pb2():
    """tensorboard's Event proto module; MissingExtra when the extra is not installed."""
    try:
        return importlib.import_module("tensorboard.compat.proto.event_pb2")
    except ImportError:
        raise MissingExtra(f"reading TensorBoard files needs the tensorboard extra: {EXTRA}") from None


@functools.lru_cache(maxsize=1)
def _checksum():
    """tensorboard's masked CRC-32C; None where it cannot be imported (records are then taken unchecked)."""
    try:
        return importlib.import_module("tensorboard.compat.tensorflow_stub.pywrap_tensorflow").masked_crc32c
    except ImportError:
        return None


@functools.lru_cache(maxsize=4096)
def _header_ok(header: bytes, crc: int) -> bool:
    """The length field of a record matches its checksum (cached: a damaged region of zeros repeats one)."""
    masked = _checksum()
    return masked is None or masked(header) == crc


def _data_ok(data: bytes, crc: int) -> bool:
    masked = _checksum()
    return masked is None or masked(data) == crc


# --- which paths are TensorBoard runs ------------------------------------------------------------------------

def is_event_file(name: str) -> bool:
    return MARK in name and not name.startswith(".")


def event_files(directory: str | Path) -> list[Path]:
    """The event files directly in `directory`, in the order they were written (their names begin with
    events.out.tfevents.<unix time>); [] when there are none or it cannot be listed."""
    try:
        with os.scandir(directory) as it:
            found = [Path(e.path) for e in it if is_event_file(e.name) and e.is_file()]
    except OSError:
        return []
    return sorted(found, key=lambda p: p.name)


def tensorboard_run(path: str | Path) -> Path | None:
    """`path` when it is a TensorBoard run (an event file, or a directory with event files and without the
    cockpit's events.jsonl), else None. Names only: nothing is read."""
    p = Path(path)
    if p.is_dir():
        return p if not (p / LOG_NAME).exists() and event_files(p) else None
    return p if p.is_file() and is_event_file(p.name) else None


def check_run(path: str | Path) -> Path:
    """The TensorBoard run at `path`, checked as `cockpit --replay` and `watch` take it: LogError when it is
    not readable, MissingExtra when tensorboard is not installed."""
    p = tensorboard_run(path)
    if p is None:
        raise LogError(f"{path}: holds no TensorBoard event files (events.out.tfevents.*)")
    for f in ([p] if p.is_file() else event_files(p)):
        if not os.access(f, os.R_OK):
            raise LogError(f"{f}: cannot read (permission denied); check permissions")
    event_pb2()
    return p


def check_source(path: str | Path, empty_ok: bool = False) -> Path:
    """What `cockpit --replay` and `watch` read at `path`: a TensorBoard run (check_run) or a cockpit log
    (common/reader.py check_log); a directory whose subdirectories are TensorBoard runs is refused with
    their names."""
    if tensorboard_run(path) is not None:
        return check_run(path)
    p = Path(path)
    if p.is_dir() and not (p / LOG_NAME).exists():
        below = sorted(d.name for d in _subdirectories(p) if event_files(d))
        if below:
            shown = ", ".join(below[:5]) + (f" and {len(below) - 5} more" if len(below) > 5 else "")
            raise LogError(f"{path}: holds TensorBoard runs in its subdirectories ({shown}); pass one of them "
                           f"(`cockpit runs --dir {path}` lists them)")
    return check_log(path, empty_ok)


def _subdirectories(p: Path) -> list[Path]:
    try:
        with os.scandir(p) as it:
            return [Path(e.path) for e in it if e.is_dir()]
    except OSError:
        return []


def run_dir(path: Path) -> Path:
    """The directory a run's files are in (the run id is its name)."""
    return path if path.is_dir() else path.parent


# --- records -------------------------------------------------------------------------------------------------

class _RecordFile:
    """The records of one event file, read incrementally: complete records are returned, a partial last one
    is kept until its bytes arrive."""

    def __init__(self, path: Path, stats: ReadStats):
        self.path, self.stats = path, stats
        self.pos = 0            # bytes of the file read so far
        self.inode = None
        self.buf = b""          # bytes read, not yet a complete record
        self.skip = 0           # bytes still to pass over of an oversized record
        self.lost = False       # after a damaged length: looking for the next intact record

    def read(self, max_bytes: int) -> tuple[list[bytes], bool, bool]:
        """(the records completed by new bytes, whether any new bytes came, whether every byte the file had
        is read)."""
        try:
            st = self.path.stat()
        except OSError:
            return [], False, True
        if self.inode is not None and (st.st_ino != self.inode or st.st_size < self.pos):
            self.pos, self.buf, self.skip, self.lost = 0, b"", 0, False   # rewritten: start over
        self.inode = st.st_ino
        if st.st_size <= self.pos:
            return [], False, True
        out = []
        with open(self.path, "rb") as f:
            f.seek(self.pos)
            left = min(max_bytes, st.st_size - self.pos)
            while left > 0:
                data = f.read(min(CHUNK, left))
                if not data:
                    break
                self.pos += len(data)
                left -= len(data)
                out.extend(self._feed(data))
        return out, True, self.pos >= st.st_size

    def _feed(self, data: bytes) -> list[bytes]:
        if self.skip:
            n = min(self.skip, len(data))
            self.skip -= n
            data = data[n:]
        buf, i, out = self.buf + data if self.buf else data, 0, []
        n = len(buf)
        while True:
            if self.lost:
                j = _next_record(buf, i)
                if j is None:
                    i = max(i, n - 11)       # a header may start in the last 11 bytes: keep them
                    break
                i, self.lost = j, False
            if n - i < 12:
                break
            length, crc = struct.unpack_from("<QI", buf, i)
            if not _header_ok(buf[i:i + 8], crc):
                self._skip("damaged record")
                self.lost = True
                i += 1
                continue
            end = i + 12 + length + 4
            if length > MAX_RECORD:
                self._skip("over 64 MB")
                self.skip = max(0, end - n)
                i = min(end, n)
                continue
            if end > n:
                break
            record = buf[i + 12:i + 12 + length]
            if _data_ok(record, struct.unpack_from("<I", buf, end - 4)[0]):
                self.stats.lines += 1
                out.append(record)
            else:
                self._skip("damaged record")
            i = end
        self.buf = buf[i:]
        return out

    def _skip(self, reason: str):
        self.stats.lines += 1
        self.stats.skip(reason)

    def end(self):
        """At the end of the data: bytes of a record never completed are a torn tail (not an error)."""
        if self.buf.strip(b"\0") or self.skip:
            self.stats.torn_tail = True
        self.buf, self.skip = b"", 0


def _next_record(buf: bytes, start: int) -> int | None:
    """The offset of the next intact record header at or after `start` (its length plausible and its
    checksum right), None when the bytes in hand hold none."""
    for i in range(start, len(buf) - 11):
        length, crc = struct.unpack_from("<QI", buf, i)
        if length <= MAX_RECORD and _header_ok(buf[i:i + 8], crc):
            return i
    return None


# --- records -> events ---------------------------------------------------------------------------------------

def scalar_field(tag: str) -> str | None:
    """The field of our events a scalar tag fills (`loss`, `val_loss`, `lr`, ...), None for a metric."""
    low = tag.lower()
    field = _FIELD_OF.get(low)
    if field is None and low.startswith(LR_PREFIX):
        return "lr"
    return field


def _tensor_scalar(t) -> float | None:
    """The value of a scalar TensorProto (TF 2 style summaries, SummaryWriter's new_style)."""
    for values in (t.double_val, t.float_val, t.int64_val, t.int_val):
        if len(values):
            return float(values[0])
    if len(t.half_val):
        bits = t.half_val[0]
        if t.dtype == 14:   # bfloat16: the high half of a float32
            return struct.unpack("<f", struct.pack("<I", (bits & 0xFFFF) << 16))[0]
        return struct.unpack("<e", struct.pack("<H", bits & 0xFFFF))[0]
    fmt = {1: "<f", 2: "<d", 3: "<i", 9: "<q", 19: "<e"}.get(t.dtype)
    if fmt and len(t.tensor_content) >= struct.calcsize(fmt):
        return float(struct.unpack_from(fmt, t.tensor_content)[0])
    return None


def decode_image(encoded: bytes) -> dict:
    """A PNG (or JPEG) as the `image` of a sample event, scaled down to MAX_IMAGE_SIDE; ValueError when Pillow
    cannot read it."""
    from PIL import Image

    try:
        img = Image.open(io.BytesIO(encoded))
        img.load()
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise ValueError(f"image not decodable ({type(e).__name__})") from None
    if img.mode not in ("L", "RGB", "RGBA"):
        img = img.convert("RGBA" if "A" in img.getbands() or "transparency" in img.info else "RGB")
    if max(img.size) > MAX_IMAGE_SIDE:
        img.thumbnail((MAX_IMAGE_SIDE, MAX_IMAGE_SIDE))
    w, h = img.size
    return {"h": h, "w": w, "c": len(img.getbands()), "data": base64.b64encode(img.tobytes()).decode()}


# run_start fields an exported run's hparams carry (cockpit/tensorboard_export.py IDENTITY), and their kind
IDENTITY = {"arch": str, "task": str, "device": str, "profile": str, "unit": str, "n_params": int,
            "max_steps": int}


def _fits(value, kind) -> bool:
    if kind is int:
        return type(value) is float and value.is_integer() and value >= 0
    return type(value) is str


def _time(wall_time: float) -> float | None:
    return wall_time if math.isfinite(wall_time) and wall_time >= 0 else None


class _Group:
    """The summaries of one step: scalars by tag, then samples and logs in the order they came."""

    def __init__(self, step: int):
        self.step = step
        self.scalars: dict[str, float] = {}
        self.time: float | None = None
        self.others: list[dict] = []


class _Mapper:
    """Decoded Event protos -> our events, a step at a time (the module docstring says how)."""

    def __init__(self, run_id: str, stats: ReadStats):
        self.run_id, self.stats = run_id, stats
        self.pb2 = event_pb2()
        self.started = False
        self.hparams: dict = {}             # hyperparameters read before the run_start was made
        self.group: _Group | None = None
        self.last: _Group | None = None     # the latest group made into events
        self.last_time: float | None = None

    def record(self, data: bytes) -> list:
        try:
            ev = self.pb2.Event.FromString(data)
        except Exception:  # noqa: BLE001 — protobuf's DecodeError, or a message nested too deeply
            self.stats.skip("not an event")
            return []
        self.stats.events += 1
        what = ev.WhichOneof("what")
        if what not in ("summary", "log_message"):
            return []     # file_version, graphs, session logs, run metadata: nothing to show
        t = _time(ev.wall_time)
        if not self.started and what == "summary" and all(
                v.metadata.plugin_data.plugin_name == "hparams" for v in ev.summary.value):
            self.hparams = self.hparams or self._hparams(ev)   # the config, for the run_start still to come
            return []
        out = [] if self.started else [self.start(t, self.hparams)]
        if self.group is not None and self.group.step != ev.step:
            out += self.flush()
        if self.group is None:
            self.group = _Group(ev.step)
        g = self.group
        if t is not None:
            self.last_time = t
            if g.time is None:   # a step's events carry the time of its first record
                g.time = t
        if what == "log_message":
            g.others.append({"type": "log", "time": t, "level": LOG_LEVELS.get(ev.log_message.level, "info"),
                             "message": ev.log_message.message, "step": ev.step if ev.step >= 0 else None})
            return out
        for value in ev.summary.value:
            self._value(g, value, t)
        return out

    def start(self, t: float | None, hparams: dict) -> E.Event:
        """The run_start made up for the run (at its first summary: hparams written first are its config;
        the cockpit's own identity keys among them, as `cockpit export --tensorboard` writes them, fill
        theirs)."""
        self.started = True
        ev = {"type": "run_start", "time": t, "run_id": self.run_id, "preset": PRESET}
        for name, kind in IDENTITY.items():
            value = hparams.pop(name, None)
            if value is not None and _fits(value, kind):
                ev[name] = int(value) if kind is int else value
        if hparams:
            ev["config"] = hparams
        started = E.convert(ev)
        return started if isinstance(started, E.RunStart) else E.convert(
            {"type": "run_start", "time": t, "run_id": self.run_id, "preset": PRESET})

    def _hparams(self, ev) -> dict:
        """The hyperparameters of a summary of the hparams plugin ({} for any other)."""
        for v in ev.summary.value:
            if v.metadata.plugin_data.plugin_name != "hparams":
                continue
            try:
                data = importlib.import_module("tensorboard.plugins.hparams.plugin_data_pb2").HParamsPluginData
                info = data.FromString(v.metadata.plugin_data.content)
            except Exception:  # noqa: BLE001 — not ours to judge: the run simply has no config
                return {}
            if info.HasField("session_start_info"):
                return {k: getattr(x, x.WhichOneof("kind")) for k, x in info.session_start_info.hparams.items()
                        if x.WhichOneof("kind") in ("number_value", "string_value", "bool_value")}
        return {}

    def _value(self, g: _Group, v, t):
        kind = v.WhichOneof("value")
        plugin = v.metadata.plugin_data.plugin_name
        if kind == "simple_value":
            g.scalars[v.tag] = float(v.simple_value)
        elif kind == "tensor" and plugin == "scalars":
            x = _tensor_scalar(v.tensor)
            if x is not None:
                g.scalars[v.tag] = x
        elif kind == "tensor" and plugin == "text":
            text = "\n".join(s.decode("utf-8", "replace") for s in v.tensor.string_val)
            g.others.append({"type": "sample", "time": t, "step": g.step, "kind": "text", "text": text,
                             "prompt": v.tag.removesuffix(TEXT_SUFFIX)})
        elif kind == "image" or (kind == "tensor" and plugin == "images" and len(v.tensor.string_val) > 2):
            encoded = v.image.encoded_image_string if kind == "image" else v.tensor.string_val[2]
            try:
                image = decode_image(encoded)
            except ValueError as e:
                self.stats.skip(str(e))
                return
            g.others.append({"type": "sample", "time": t, "step": g.step, "kind": "image", "image": image,
                             "prompt": v.tag})

    def flush(self) -> list:
        """The events of the step held so far."""
        g, self.group = self.group, None
        if g is None:
            return []
        new = set(g.scalars)
        if self.last is not None and self.last.step == g.step:  # more of a step already shown: shown again whole
            g.scalars = {**self.last.scalars, **g.scalars}
            g.time = self.last.time if self.last.time is not None else g.time
        self.last = g
        train: dict = {}
        evals: dict = {"metrics": {}}
        for tag, value in g.scalars.items():
            field = scalar_field(tag)
            if field in TRAIN_FIELDS:
                train.setdefault(field, value)
            elif field == "val_loss":
                evals.setdefault("val_loss", value)
            else:
                evals["metrics"][tag] = value
        out = []
        if any(scalar_field(tag) in TRAIN_FIELDS for tag in new):
            for amount in ("throughput", "tokens", "items"):   # finite and >= 0, or left out
                x = train.get(amount)
                if x is not None and not (math.isfinite(x) and x >= 0):
                    del train[amount]
            train.setdefault("loss", math.nan)   # a step that logged its lr but not its loss
            out.append({"type": "step", "time": g.time, "step": g.step, **train})
        if any(scalar_field(tag) not in TRAIN_FIELDS for tag in new):
            out.append({"type": "eval", "time": g.time, "step": g.step, **evals})
        out += g.others
        g.others = []
        return [E.convert(ev) for ev in out]   # a negative step makes them Invalid: the reducer counts them

    def end(self, step: int) -> E.RunEnd:
        return E.RunEnd(time=self.last_time, status="completed", step=step, synthetic=True)


# --- following a run -----------------------------------------------------------------------------------------

def _local_pid(name: str) -> int | None:
    """The writer's pid from an event file's name (events.out.tfevents.<time>.<host>.<pid>.<n>) when that
    host is this machine; None otherwise."""
    rest = name.split(f".{MARK}.", 1)[-1]
    host = socket.gethostname()
    _, _, after = rest.partition(".")
    if not after.startswith(host + "."):
        return None
    pid = after[len(host) + 1:].split(".", 1)[0]
    return int(pid) if pid.isdigit() else None


class TfEventsFollower:
    """Follows a TensorBoard run (a directory of event files, or one file) as common/reader.py's Follower
    follows a log: `poll()` returns the new events since the last call, `finish()` the rest with the run's
    end, `stats` counts records as lines (damaged ones skipped, a torn last one noted). Files that appear
    later in the directory (a resumed trainer) are read after the earlier ones."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.dir = run_dir(self.path)
        self.stats = ReadStats()
        self.files: dict[Path, _RecordFile] = {}
        self.mapper = _Mapper(self.dir.resolve().name or str(self.dir), self.stats)
        self.step = 0          # the latest step made into events
        self.ended = False     # the synthetic run_end was made

    def _paths(self) -> list[Path]:
        return [self.path] if self.path.is_file() else event_files(self.dir)

    def poll(self, max_bytes: int = 64 << 20) -> list:
        out, grew, caught_up = [], False, True
        for p in self._paths():
            rf = self.files.get(p)
            if rf is None:
                rf = self.files[p] = _RecordFile(p, self.stats)
            records, new, whole = rf.read(max_bytes)
            grew, caught_up = grew or new, caught_up and whole
            for data in records:
                out += self.mapper.record(data)
        if caught_up:   # every byte written so far is read: the step held back is complete
            out += self.mapper.flush()
        self._noted(out)
        if not grew and not self.ended and self.files and not self.writer_alive():
            out += self._end()
        return out

    def finish(self) -> list:
        """Everything left, the writer being gone: the step held back and the run's end."""
        out = self.poll()
        for rf in self.files.values():
            rf.end()
        out += self._noted(self.mapper.flush())
        if not self.ended:
            out += self._end()
        return out

    def _noted(self, events: list) -> list:
        for ev in events:
            if ev.__class__ is E.Step:
                self.step = ev.step
        return events

    def _end(self) -> list:
        """The run's end (after its run_start, for a run of no summaries at all)."""
        self.ended = True
        return ([] if self.mapper.started else [self.mapper.start(None, self.mapper.hparams)]) + [
            self.mapper.end(self.step)]

    def writer_alive(self) -> bool:
        """Whether something still writes the run: the process named by the newest file when it is of this
        machine, else a write within QUIET_S."""
        paths = self._paths()
        if not paths:
            return False
        newest = paths[-1]
        pid = _local_pid(newest.name)
        if pid is not None:
            return trainer_alive(pid, _name_time(newest.name))
        try:
            return time.time() - newest.stat().st_mtime < QUIET_S
        except OSError:
            return False


def _name_time(name: str) -> float | None:
    stamp = name.split(f".{MARK}.", 1)[-1].split(".", 1)[0]
    return float(stamp) if stamp.isdigit() else None


def read_blocks(path: str | Path, stats: ReadStats | None = None):
    """The events of a TensorBoard run, a list at a time (common/reader.py's read_blocks for event files);
    its end is included when its writer is gone."""
    follower = TfEventsFollower(check_run(path))
    while True:
        events = follower.poll()
        if not events:
            break
        yield events
    if not follower.writer_alive():
        yield follower.finish()
    if stats is not None:
        for name in ("lines", "events", "skipped", "torn_tail"):
            setattr(stats, name, getattr(follower.stats, name))
        stats.reasons.update(follower.stats.reasons)


def load_state(path: str | Path, stats: ReadStats | None = None) -> RunState:
    """A whole TensorBoard run folded (common/state.py's load_state for event files)."""
    s = RunState()
    with bulk():
        for block in read_blocks(path, stats):
            s.apply_all(block)
    return s   # without run_end its writer is alive (never settled: a run without a pid would read as killed)
