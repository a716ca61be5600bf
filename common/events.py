"""The event protocol: every event a trainer writes, every field it may carry, as typed structs.

A run's observations travel one way: the trainer writes them to `events.jsonl` (JSON Lines, one event per
line, flushed per event) and every reader decodes them here. docs/events.md describes each type and field;
tests/test_protocol.py fails when that page and these classes disagree.

    encode(type, fields, time)   -> one line (bytes): the writer's only way out; unknown types, unknown fields
                                    and mistyped values raise ProtocolError (a bug in the writer, not bad input)
    decode(raw)                  -> an Event, or Unknown (a type this version does not know) or Invalid (a known
                                    type whose fields are missing or mistyped); raises NotAnEvent for lines
                                    that are not a JSON object with a string `type`
    decode_many(block)           -> the events of many complete lines at once (the fast path of the reader)
    convert(obj)                 -> the same as decode, from an already parsed dict

Top-level events are msgspec Structs (attributes); their nested records (a memory layer, a GPU, the metrics of
an eval) are TypedDicts, validated on decode and read as plain dicts. Every event carries `v` (the schema
version, 1), `type` and `time` (unix seconds). JSON has no NaN or infinity: non-finite numbers are written as
the strings "nan", "inf" and "-inf", and any float field reads them back as floats.

Every field is validated as it is read, against the bounds its readers rely on (steps and sizes whole, >= 0 and
within int64; times, amounts and rates finite; names one printable line): a value outside them makes the event
Invalid. Free text keeps its words, its control characters shown as symbols. No log content can make a reader
raise, draw off the end of a float, or write escape sequences to a terminal.

Forward compatibility: unknown fields are ignored, unknown types are passed on as Unknown (readers count and
skip them), and a `v` newer than SCHEMA_VERSION is noted by the reader. No torch, no Textual.
"""
from __future__ import annotations

import base64
import math
import numbers
import sys
import unicodedata
from typing import Annotated, Any, ClassVar, Literal, NotRequired, Optional, TypedDict, Union

import msgspec

from common.dotted import MAX_DEPTH, nested_deeper_than
from common.fmt import printable

SCHEMA_VERSION = 1

# Bounds every reader relies on, checked as each line is decoded (a value outside them makes a bad event):
INT64_MAX = 2**63 - 1
Count = Annotated[int, msgspec.Meta(ge=0, le=INT64_MAX)]        # steps, sizes in bytes, counts, pids
Positive = Annotated[int, msgspec.Meta(ge=1, le=INT64_MAX)]     # a dimension, a number of processes
Int64 = Annotated[int, msgspec.Meta(ge=-INT64_MAX - 1, le=INT64_MAX)]  # an exit code, a metric
Finite = Annotated[float, msgspec.Meta(ge=-sys.float_info.max, le=sys.float_info.max)]  # never NaN or inf
Amount = Annotated[float, msgspec.Meta(ge=0.0, le=sys.float_info.max)]  # times, tokens, rates: finite, >= 0
ImageSide = Annotated[int, msgspec.Meta(ge=1, le=8192)]      # pixels: drawing costs grow with them
NAME_MAX = 512
# what the trainer names from code (a layer, a kernel, a device, a dtype): one line of printable characters
Name = Annotated[str, msgspec.Meta(max_length=NAME_MAX, pattern="^[^\\x00-\\x1f\\x7f-\\x9f]*\\Z")]
# Free text (a sample, a message, a traceback, a path) is kept, its control characters made visible
# (common/fmt.py printable) as it is read: a log never drives the terminal that shows it.


class ProtocolError(ValueError):
    """The writer was asked to write something the protocol does not allow (a programming error)."""


# --- nested records (plain dicts once decoded) -------------------------------------------------------------

class Layer(TypedDict, total=False):
    name: Name
    activation_bytes: Count
    param_bytes: Count


class MemoryTotals(TypedDict, total=False):
    params: Count
    grads: Count
    optimizer: Count
    activations: Count
    peak_allocated: Optional[Count]
    reserved: Count
    trainable_params: Count
    method: Name
    quant_state: Count


class MethodMemory(TypedDict, total=False):
    method: Name
    params: Count
    quant_state: Count
    grads: Count
    optimizer: Count
    activations: Count
    total: Count
    n_params: Count
    trainable_params: Count
    error: str


class MemorySnapshot(TypedDict, total=False):
    step: Optional[Count]
    layers: list[Layer]
    totals: MemoryTotals


class Gpu(TypedDict, total=False):
    index: Count
    name: Name
    temp_c: Optional[Finite]
    util_pct: Optional[Amount]
    mem_used: Optional[Count]
    mem_total: Optional[Count]
    power_w: Optional[Amount]
    throttle: list[Name]


class Cpu(TypedDict, total=False):
    util_pct: Optional[Amount]
    rss: Optional[Count]
    ram_used: Optional[Count]
    ram_total: Optional[Count]
    cores: Optional[Count]


class Rank(TypedDict, total=False):
    rank: Count
    throughput: Amount
    step_ms: Amount
    host: Name
    pid: Count


class Experts(TypedDict, total=False):
    counts: list[Count]
    balance_loss: float
    dropped: Count
    per_layer: list[list[Count]]


class Image(TypedDict):
    h: ImageSide
    w: ImageSide
    c: Positive
    data: str  # base64 of h*w*c uint8 values, row-major HWC


class Grid(TypedDict, total=False):
    rows: Positive
    cols: Positive
    cell_h: Positive
    cell_w: Positive
    pad: Count


Metrics = dict[str, Union[float, Int64, bool, str, None]]

# An internals event holds a few small arrays (a probe's attention maps, per-layer norms): bounded so that no log
# can make a reader build a huge one. The trainer keeps well under these (trainers/internals.py).
MAX_INTERNALS_VALUES = 1 << 16   # numbers in one internals event, all its arrays together
MAX_INTERNALS_ARRAYS = 64
MAX_ARRAY_DIMS = 4
MAX_PROBE_TOKENS = 256


class Array(TypedDict):
    name: Name
    shape: Annotated[list[Positive], msgspec.Meta(min_length=1, max_length=MAX_ARRAY_DIMS)]
    data: Annotated[list[float], msgspec.Meta(max_length=MAX_INTERNALS_VALUES)]  # row-major
    dims: NotRequired[list[Name]]      # what each axis is: layer, head, query, key, token, bin, ...
    labels: NotRequired[list[Name]]    # a label per entry of the first axis (a layer's or a tensor's name)
    cells: NotRequired[list[Name]]     # a label per value (the logit lens's tokens)
    lo: NotRequired[Finite]            # the range the last axis spans (a histogram's bins, timestep buckets)
    hi: NotRequired[Finite]


def _check_image(img: Image) -> None:
    """The payload is base64 of exactly h*w*c bytes (a few kilobytes: image samples are rare events)."""
    h, w, c = img["h"], img["w"], img["c"]
    if c not in (1, 3, 4):
        raise ValueError(f"image of {h}x{w}x{c}: needs 1, 3 or 4 channels")
    try:
        size = len(base64.b64decode(img["data"], validate=True))
    except ValueError:  # binascii.Error: not base64
        raise ValueError("image payload is not base64") from None
    if size != h * w * c:
        raise ValueError(f"image payload holds {size} bytes, not h*w*c = {h * w * c}")


def _check_arrays(arrays: list[Array]) -> None:
    """Each array's data fills its shape exactly, its labels match its axes, and all of them together hold at
    most MAX_INTERNALS_VALUES numbers."""
    total = 0
    for a in arrays:
        name, shape, n = a["name"], a["shape"], len(a["data"])
        size = math.prod(shape)
        if size != n:
            raise ValueError(f"internals array {name!r} holds {n} values, not the {size} of its shape {shape}")
        total += n
        if total > MAX_INTERNALS_VALUES:
            raise ValueError(f"internals arrays hold more than {MAX_INTERNALS_VALUES} values")
        if "dims" in a and len(a["dims"]) != len(shape):
            raise ValueError(f"internals array {name!r} names {len(a['dims'])} axes of {len(shape)}")
        if "labels" in a and len(a["labels"]) != shape[0]:
            raise ValueError(f"internals array {name!r} has {len(a['labels'])} labels for {shape[0]} entries")
        if "cells" in a and len(a["cells"]) != n:
            raise ValueError(f"internals array {name!r} has {len(a['cells'])} cell labels for {n} values")


_NON_FINITE = frozenset(("nan", "inf", "-inf"))


def _printable_fields(ev, names: tuple[str, ...]) -> None:
    """The free-text fields `names` of an event, their control characters made visible."""
    for name in names:
        value = getattr(ev, name)
        if value.__class__ is str:
            setattr(ev, name, printable(value))


def _printable_tree(obj):
    """A config (depth already bounded) with the control characters of its keys and strings made visible."""
    if obj.__class__ is str:
        return printable(obj)
    if isinstance(obj, dict):
        return {printable(k) if k.__class__ is str else k: _printable_tree(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_printable_tree(v) for v in obj]
    return obj


# --- events ------------------------------------------------------------------------------------------------

class Event(msgspec.Struct, tag_field="type", kw_only=True, gc=False):
    type: ClassVar[str] = ""  # the tag ("step", ...), set on each class below
    v: Count = SCHEMA_VERSION
    time: Optional[Amount] = None


class RunStart(Event, tag="run_start", kw_only=True, gc=False):
    run_id: Optional[str] = None
    preset: Optional[str] = None
    arch: Optional[Name] = None
    task: Optional[Name] = None
    config: Optional[dict[str, Any]] = None
    n_params: Optional[Count] = None
    device: Optional[Name] = None
    profile: Optional[Name] = None
    pid: Optional[Count] = None
    unit: Optional[Literal["tokens", "items"]] = None
    max_steps: Optional[Count] = None
    world_size: Positive = 1
    resumed_from: Optional[Count] = None
    torch: Optional[Name] = None
    amp_dtype: Optional[Name] = None
    dataset: Optional[dict[str, Any]] = None

    def __post_init__(self):
        for field in ("config", "dataset"):
            tree = getattr(self, field)
            if tree is not None:
                if nested_deeper_than(tree, MAX_DEPTH):
                    raise ValueError(f"{field} nested deeper than {MAX_DEPTH} levels")
                setattr(self, field, _printable_tree(tree))
        _printable_fields(self, ("run_id", "preset"))


class Step(Event, tag="step", kw_only=True, gc=False):
    step: Count
    loss: float
    lr: Optional[float] = None
    grad_norm: Optional[float] = None
    tokens: Optional[Amount] = None
    items: Optional[Amount] = None
    throughput: Optional[Amount] = None
    elapsed: Optional[Finite] = None
    max_steps: Optional[Count] = None
    ranks: Optional[list[Rank]] = None

    @property
    def units(self) -> Optional[float]:
        """Tokens (language models) or items (diffusion) seen so far."""
        return self.tokens if self.tokens is not None else self.items


class Eval(Event, tag="eval", kw_only=True, gc=False):
    step: Count
    val_loss: Optional[float] = None   # absent: the eval measured other metrics only (a TensorBoard run's scalars)
    metrics: Metrics = {}
    experts: Optional[Experts] = None
    method: Optional[Name] = None

    def __post_init__(self):
        if self.metrics:
            self.metrics = _restore_non_finite(self.metrics)


class Sample(Event, tag="sample", kw_only=True, gc=False):
    step: Count
    kind: Literal["text", "image"]
    text: Optional[str] = None
    prompt: Optional[str] = None
    image: Optional[Image] = None
    classes: Optional[list[Union[Name, Int64]]] = None
    grid: Optional[Grid] = None
    sampler: Optional[Name] = None
    guidance: Optional[Finite] = None
    caption: Optional[Name] = None

    def __post_init__(self):
        if self.kind == "text" and self.text is None:
            raise ValueError("a text sample needs `text`")
        if self.kind == "image":
            if self.image is None:
                raise ValueError("an image sample needs `image`")
            _check_image(self.image)
        _printable_fields(self, ("text", "prompt"))


class Memory(Event, tag="memory", kw_only=True, gc=False):
    step: Optional[Count] = None
    layers: list[Layer]
    totals: MemoryTotals
    budget_bytes: Optional[Count] = None
    method: Optional[Name] = None
    comparison: Optional[list[MethodMemory]] = None
    comparison_note: Optional[str] = None

    def __post_init__(self):
        _printable_fields(self, ("comparison_note",))
        for row in self.comparison or ():
            if "error" in row:
                row["error"] = printable(row["error"])


class System(Event, tag="system", kw_only=True, gc=False):
    gpus: Optional[list[Gpu]] = None
    cpu: Optional[Cpu] = None
    nvml: Optional[str] = None   # why there is no GPU table (NVML's error)

    def __post_init__(self):
        _printable_fields(self, ("nvml",))


class Checkpoint(Event, tag="checkpoint", kw_only=True, gc=False):
    step: Count
    path: str = ""
    reason: Optional[Name] = None

    def __post_init__(self):
        self.path = printable(self.path)


class Kernel(Event, tag="kernel", kw_only=True, gc=False):
    name: Name
    shape: Optional[list[Count]] = None
    dims: Optional[Name] = None
    dtype: Optional[Name] = None
    backend: Optional[Name] = None
    device: Optional[Name] = None
    timing: Optional[Name] = None
    mem_method: Optional[Name] = None
    note: Optional[str] = None
    ok: Optional[bool] = None
    error: Optional[str] = None
    max_abs_err: Optional[float] = None
    rel_rms_err: Optional[float] = None
    grad_max_abs_err: Optional[float] = None
    grad_rel_rms_err: Optional[float] = None
    worst: Optional[Name] = None
    tol_rms: Optional[Amount] = None
    tol_max: Optional[Amount] = None
    torch_fwd_ms: Optional[Amount] = None
    torch_ms: Optional[Amount] = None
    torch_mem: Optional[Count] = None
    triton_fwd_ms: Optional[Amount] = None
    triton_ms: Optional[Amount] = None
    triton_mem: Optional[Count] = None
    compile_fwd_ms: Optional[Amount] = None
    compile_ms: Optional[Amount] = None
    compile_mem: Optional[Count] = None
    compile_error: Optional[str] = None
    speedup: Optional[Amount] = None
    mem_saving: Optional[Finite] = None

    def __post_init__(self):
        _printable_fields(self, ("note", "error", "compile_error"))


class Internals(Event, tag="internals", kw_only=True, gc=False):
    step: Count
    arrays: Annotated[list[Array], msgspec.Meta(max_length=MAX_INTERNALS_ARRAYS)]
    arch: Optional[Name] = None
    probe: Optional[str] = None
    tokens: Optional[Annotated[list[Name], msgspec.Meta(max_length=MAX_PROBE_TOKENS)]] = None

    def __post_init__(self):
        _check_arrays(self.arrays)
        _printable_fields(self, ("probe",))

    def array(self, name: str) -> Optional[Array]:
        """The array called `name`, or None."""
        return next((a for a in self.arrays if a["name"] == name), None)


class Log(Event, tag="log", kw_only=True, gc=False):
    level: Name = "info"
    message: str
    state: Optional[Literal["paused", "running"]] = None
    step: Optional[Count] = None
    skipped: Optional[Count] = None
    ranks: Optional[list[Rank]] = None

    def __post_init__(self):
        _printable_fields(self, ("message",))


class RunEnd(Event, tag="run_end", kw_only=True, gc=False):
    status: Literal["completed", "stopped", "failed"]
    step: Optional[Count] = None
    metrics: Metrics = {}
    error: Optional[str] = None
    exit_code: Optional[Int64] = None
    memory: Optional[MemorySnapshot] = None
    synthetic: bool = False  # written by the cockpit for a trainer that died without one

    def __post_init__(self):
        if self.metrics:
            self.metrics = _restore_non_finite(self.metrics)
        _printable_fields(self, ("error",))


EVENT_TYPES: dict[str, type[Event]] = {
    cls.__struct_config__.tag: cls
    for cls in (RunStart, Step, Eval, Sample, Memory, System, Checkpoint, Kernel, Internals, Log, RunEnd)
}
for _kind, _cls in EVENT_TYPES.items():
    _cls.type = _kind
AnyEvent = Union[tuple(EVENT_TYPES.values())]  # the tagged union the decoder reads


class Unknown(msgspec.Struct, gc=False):
    """An event of a type this version does not know: counted and skipped by readers."""

    type: str
    v: int = SCHEMA_VERSION


class Invalid(msgspec.Struct, gc=False):
    """An event of a known type whose fields are missing or mistyped: counted and skipped by readers."""

    type: str
    reason: str
    v: int = SCHEMA_VERSION


class NotAnEvent(ValueError):
    """A line that is not a JSON object with a string `type`. str(e) is the reason: "not JSON", "invalid
    UTF-8", "not an event object"."""


# --- decoding ----------------------------------------------------------------------------------------------

_decoder = msgspec.json.Decoder(AnyEvent)
_untyped = msgspec.json.Decoder()


def _restore_non_finite(obj, depth: int = 0):
    """obj with every "nan" / "inf" / "-inf" string turned back into the float it stands for (the way
    back from _clean). Decoding tries without it first: a log of finite numbers never pays for this."""
    if obj.__class__ is str:
        return float(obj) if obj in _NON_FINITE else obj
    if depth > 8:
        return obj
    if isinstance(obj, dict):
        return {k: _restore_non_finite(v, depth + 1) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_restore_non_finite(v, depth + 1) for v in obj]
    return obj


def _convert_restored(obj: dict, first_error: Exception) -> Event | Unknown | Invalid:
    """A parsed line that failed the typed decode: with its non-finite strings restored it may be a valid
    event; otherwise it is classified (Unknown, Invalid, or NotAnEvent raised)."""
    if isinstance(obj, dict):
        kind = obj.get("type")
        cls = EVENT_TYPES.get(kind) if isinstance(kind, str) else None
        if cls is not None:
            try:
                return msgspec.convert(_restore_non_finite(obj), cls)
            except (msgspec.ValidationError, RecursionError, ValueError, TypeError):
                pass
    return _classify(obj, first_error)


def _classify(obj, error: Exception) -> Event | Unknown | Invalid:
    """Why a line did not decode as a known event, given its untyped parse."""
    if not isinstance(obj, dict) or not isinstance(obj.get("type"), str):
        raise NotAnEvent("not an event object")
    v = obj.get("v")
    v = v if type(v) is int and 0 <= v <= INT64_MAX else SCHEMA_VERSION
    t = obj["type"]
    if t not in EVENT_TYPES:
        return Unknown(type=printable(t[:64]), v=v)
    return Invalid(type=t, reason=str(error).splitlines()[0][:200] if str(error) else type(error).__name__, v=v)


def decode(raw: bytes) -> Event | Unknown | Invalid:
    """One line of a log (without its newline) -> an event; see the module docstring."""
    try:
        return _decoder.decode(raw)
    except (msgspec.DecodeError, RecursionError, ValueError, TypeError) as e:
        error = e
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        raise NotAnEvent("invalid UTF-8") from None
    try:
        obj = _untyped.decode(raw)
    except RecursionError:
        raise NotAnEvent("nested too deeply") from None
    except msgspec.DecodeError as e:
        raise NotAnEvent("invalid UTF-8" if "UTF-8" in str(e) else "not JSON") from None
    return _convert_restored(obj, error)


def decode_many(block: bytes) -> list[Event]:
    """The events of `block`, complete lines separated by newlines, all known and valid; raises if any line
    is not (the caller then decodes line by line to count what was wrong, and where)."""
    return _decoder.decode_lines(block)


def convert(obj: dict) -> Event | Unknown | Invalid:
    """An already parsed event (a dict, as tests and the cockpit's own synthetic events build them)."""
    if isinstance(obj, Event):
        return obj
    kind = obj.get("type") if isinstance(obj, dict) else None
    cls = EVENT_TYPES.get(kind) if isinstance(kind, str) else None
    try:
        return msgspec.convert(obj, cls or AnyEvent)  # the class itself: ~20x faster than the union
    except (msgspec.ValidationError, RecursionError, ValueError, TypeError) as e:
        return _convert_restored(obj, e)


# --- encoding ----------------------------------------------------------------------------------------------

def _clean(obj):
    """JSON has no NaN/inf: write them as strings so every line stays strict JSON."""
    if obj.__class__ is float:
        return obj if math.isfinite(obj) else ("nan" if math.isnan(obj) else "inf" if obj > 0 else "-inf")
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def _plain(obj):
    """obj with numbers and strings of other types (numpy scalars, torch.__version__) as plain Python ones."""
    cls = obj.__class__
    if cls is float or cls is int or cls is str or cls is bool or obj is None:
        return obj
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, bool):
        return bool(obj)
    if isinstance(obj, numbers.Integral):
        return int(obj)
    if isinstance(obj, numbers.Real):
        return float(obj)
    if isinstance(obj, str):
        return str(obj)
    return obj  # anything else is refused by the validation that follows


_FIELDS = {t: frozenset(cls.__struct_fields__) - {"v", "time"} for t, cls in EVENT_TYPES.items()}
_encoder = msgspec.json.Encoder()


def encode(type_: str, fields: dict, time: float) -> bytes:
    """One event as a line (with its newline): exactly the fields given, after `v`, `type` and `time`.
    Raises ProtocolError for an unknown type, an undeclared field, or a value of the wrong type."""
    cls = EVENT_TYPES.get(type_)
    if cls is None:
        raise ProtocolError(f"unknown event type {type_!r}; add it to common/events.py and docs/events.md")
    extra = fields.keys() - _FIELDS[type_]
    if extra:
        raise ProtocolError(f"`{type_}` event has no field(s) {', '.join(sorted(extra))}; declare them in "
                            "common/events.py and docs/events.md")
    event = {"v": SCHEMA_VERSION, "type": type_, "time": time, **_plain(fields)}
    try:
        msgspec.convert(event, cls)
    except (msgspec.ValidationError, ValueError, TypeError) as e:
        raise ProtocolError(f"`{type_}` event: {e}") from None
    return _encoder.encode(_clean(event)) + b"\n"


def as_dict(ev: Event) -> dict:
    """An event as a dict of the fields it has (a field that is None was absent, or null, in its line): what
    the dict-reading tables (kernels/_table.py, the kernels panel) and tools take."""
    fields = {k: v for k, v in msgspec.structs.asdict(ev).items() if v is not None and k != "v"}
    return {"v": ev.v, "type": ev.type, **fields}


# --- commands: cockpit -> trainer, one JSON object per line on the trainer's stdin -------------------------

COMMANDS = ("pause", "resume", "stop", "sample", "checkpoint")
PROMPT_MAX = NAME_MAX  # a prompt for a text-conditioned sample: one line, at most this many characters


def clean_prompt(text) -> str | None:
    """A prompt as the trainer takes it: control characters and surrounding blanks dropped, cut to PROMPT_MAX
    characters; None when nothing is left (or it is not a string)."""
    if not isinstance(text, str):
        return None
    text = "".join(" " if unicodedata.category(ch)[0] == "C" else ch for ch in text).strip()
    return " ".join(text.split())[:PROMPT_MAX] or None


def encode_command(cmd: str, prompt: str | None = None) -> bytes:
    """One command line; `prompt` (sample only): generate from this caption (a text-conditioned run)."""
    if cmd not in COMMANDS:
        raise ProtocolError(f"unknown command {cmd!r}; use one of {', '.join(COMMANDS)}")
    prompt = clean_prompt(prompt)
    if prompt is not None and cmd != "sample":
        raise ProtocolError(f"only `sample` takes a prompt, not {cmd!r}")
    return _encoder.encode({"cmd": cmd} if prompt is None else {"cmd": cmd, "prompt": prompt}) + b"\n"


def parse_command(line: str | bytes) -> tuple[str, str | None] | None:
    """`{"cmd": "sample", "prompt": "a red apple"}` -> ("sample", "a red apple"); `{"cmd": "pause"}` (or a bare
    word, typed by hand) -> ("pause", None); None for anything else. A prompt is cleaned (clean_prompt); one on
    another command, or that is not a string, is dropped and the command kept."""
    text = line.decode("utf-8", "replace") if isinstance(line, bytes) else line
    text = text.strip()
    if not text:
        return None
    prompt = None
    if text.startswith("{"):
        try:
            obj = _untyped.decode(text)
        except (msgspec.DecodeError, RecursionError):
            return None
        cmd = obj.get("cmd") if isinstance(obj, dict) else None
        if cmd == "sample":
            prompt = clean_prompt(obj.get("prompt"))
    else:
        cmd = text
    return (cmd, prompt) if cmd in COMMANDS else None


def decode_command(line: str | bytes) -> str | None:
    """`{"cmd": "pause"}` (or a bare word, typed by hand) -> "pause"; None for anything else."""
    parsed = parse_command(line)
    return parsed[0] if parsed else None
