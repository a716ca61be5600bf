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

Forward compatibility: unknown fields are ignored, unknown types are passed on as Unknown (readers count and
skip them), and a `v` newer than SCHEMA_VERSION is noted by the reader. No torch, no Textual.
"""
from __future__ import annotations

import base64
import math
import numbers
from typing import Any, ClassVar, Literal, Optional, TypedDict, Union

import msgspec

SCHEMA_VERSION = 1


class ProtocolError(ValueError):
    """The writer was asked to write something the protocol does not allow (a programming error)."""


# --- nested records (plain dicts once decoded) -------------------------------------------------------------

class Layer(TypedDict, total=False):
    name: str
    activation_bytes: int
    param_bytes: int


class MemoryTotals(TypedDict, total=False):
    params: int
    grads: int
    optimizer: int
    activations: int
    peak_allocated: Optional[int]
    reserved: int
    trainable_params: int
    method: str
    quant_state: int


class MethodMemory(TypedDict, total=False):
    method: str
    params: int
    quant_state: int
    grads: int
    optimizer: int
    activations: int
    total: int
    n_params: int
    trainable_params: int
    error: str


class MemorySnapshot(TypedDict, total=False):
    step: Optional[int]
    layers: list[Layer]
    totals: MemoryTotals


class Gpu(TypedDict, total=False):
    index: int
    name: str
    temp_c: Optional[float]
    util_pct: Optional[float]
    mem_used: Optional[int]
    mem_total: Optional[int]
    power_w: Optional[float]
    throttle: list[str]


class Cpu(TypedDict, total=False):
    util_pct: Optional[float]
    rss: Optional[int]
    ram_used: Optional[int]
    ram_total: Optional[int]
    cores: Optional[int]


class Rank(TypedDict, total=False):
    rank: int
    throughput: float
    step_ms: float
    host: str
    pid: int


class Experts(TypedDict, total=False):
    counts: list[int]
    balance_loss: float
    dropped: int
    per_layer: list[list[int]]


class Image(TypedDict):
    h: int
    w: int
    c: int
    data: str  # base64 of h*w*c uint8 values, row-major HWC


class Grid(TypedDict, total=False):
    rows: int
    cols: int
    cell_h: int
    cell_w: int
    pad: int


Metrics = dict[str, Union[float, int, bool, str, None]]


def _check_image(img: Image) -> None:
    """The payload is base64 of exactly h*w*c bytes (a few kilobytes: image samples are rare events)."""
    h, w, c = img["h"], img["w"], img["c"]
    if c not in (1, 3, 4) or h <= 0 or w <= 0:
        raise ValueError(f"image of {h}x{w}x{c}: needs h, w > 0 and 1, 3 or 4 channels")
    try:
        size = len(base64.b64decode(img["data"], validate=True))
    except ValueError:  # binascii.Error: not base64
        raise ValueError("image payload is not base64") from None
    if size != h * w * c:
        raise ValueError(f"image payload holds {size} bytes, not h*w*c = {h * w * c}")


_NON_FINITE = frozenset(("nan", "inf", "-inf"))


# --- events ------------------------------------------------------------------------------------------------

class Event(msgspec.Struct, tag_field="type", kw_only=True, gc=False):
    type: ClassVar[str] = ""  # the tag ("step", ...), set on each class below
    v: int = SCHEMA_VERSION
    time: Optional[float] = None


class RunStart(Event, tag="run_start", kw_only=True, gc=False):
    run_id: Optional[str] = None
    preset: Optional[str] = None
    arch: Optional[str] = None
    task: Optional[str] = None
    config: Optional[dict[str, Any]] = None
    n_params: Optional[int] = None
    device: Optional[str] = None
    profile: Optional[str] = None
    pid: Optional[int] = None
    unit: Optional[Literal["tokens", "items"]] = None
    max_steps: Optional[int] = None
    world_size: int = 1
    resumed_from: Optional[int] = None
    torch: Optional[str] = None
    amp_dtype: Optional[str] = None
    dataset: Optional[dict[str, Any]] = None


class Step(Event, tag="step", kw_only=True, gc=False):
    step: int
    loss: float
    lr: Optional[float] = None
    grad_norm: Optional[float] = None
    tokens: Optional[float] = None
    items: Optional[float] = None
    throughput: Optional[float] = None
    elapsed: Optional[float] = None
    max_steps: Optional[int] = None
    ranks: Optional[list[Rank]] = None

    @property
    def units(self) -> Optional[float]:
        """Tokens (language models) or items (diffusion) seen so far."""
        return self.tokens if self.tokens is not None else self.items


class Eval(Event, tag="eval", kw_only=True, gc=False):
    step: int
    val_loss: float
    metrics: Metrics = {}
    experts: Optional[Experts] = None
    method: Optional[str] = None

    def __post_init__(self):
        if self.metrics:
            self.metrics = _restore_non_finite(self.metrics)


class Sample(Event, tag="sample", kw_only=True, gc=False):
    step: int
    kind: Literal["text", "image"]
    text: Optional[str] = None
    prompt: Optional[str] = None
    image: Optional[Image] = None
    classes: Optional[list[Union[str, int]]] = None
    grid: Optional[Grid] = None
    sampler: Optional[str] = None
    guidance: Optional[float] = None

    def __post_init__(self):
        if self.kind == "text" and self.text is None:
            raise ValueError("a text sample needs `text`")
        if self.kind == "image":
            if self.image is None:
                raise ValueError("an image sample needs `image`")
            _check_image(self.image)


class Memory(Event, tag="memory", kw_only=True, gc=False):
    step: Optional[int] = None
    layers: list[Layer]
    totals: MemoryTotals
    budget_bytes: Optional[int] = None
    method: Optional[str] = None
    comparison: Optional[list[MethodMemory]] = None
    comparison_note: Optional[str] = None


class System(Event, tag="system", kw_only=True, gc=False):
    gpus: Optional[list[Gpu]] = None
    cpu: Optional[Cpu] = None
    nvml: Optional[str] = None


class Checkpoint(Event, tag="checkpoint", kw_only=True, gc=False):
    step: int
    path: str = ""
    reason: Optional[str] = None


class Kernel(Event, tag="kernel", kw_only=True, gc=False):
    name: str
    shape: Optional[list[int]] = None
    dims: Optional[str] = None
    dtype: Optional[str] = None
    backend: Optional[str] = None
    device: Optional[str] = None
    timing: Optional[str] = None
    mem_method: Optional[str] = None
    note: Optional[str] = None
    ok: Optional[bool] = None
    error: Optional[str] = None
    max_abs_err: Optional[float] = None
    rel_rms_err: Optional[float] = None
    grad_max_abs_err: Optional[float] = None
    grad_rel_rms_err: Optional[float] = None
    worst: Optional[str] = None
    tol_rms: Optional[float] = None
    tol_max: Optional[float] = None
    torch_fwd_ms: Optional[float] = None
    torch_ms: Optional[float] = None
    torch_mem: Optional[int] = None
    triton_fwd_ms: Optional[float] = None
    triton_ms: Optional[float] = None
    triton_mem: Optional[int] = None
    compile_fwd_ms: Optional[float] = None
    compile_ms: Optional[float] = None
    compile_mem: Optional[int] = None
    compile_error: Optional[str] = None
    speedup: Optional[float] = None
    mem_saving: Optional[float] = None


class Log(Event, tag="log", kw_only=True, gc=False):
    level: str = "info"
    message: str
    state: Optional[Literal["paused", "running"]] = None
    step: Optional[int] = None
    skipped: Optional[int] = None
    ranks: Optional[list[Rank]] = None


class RunEnd(Event, tag="run_end", kw_only=True, gc=False):
    status: Literal["completed", "stopped", "failed"]
    step: Optional[int] = None
    metrics: Metrics = {}
    error: Optional[str] = None
    exit_code: Optional[int] = None
    memory: Optional[MemorySnapshot] = None
    synthetic: bool = False  # written by the cockpit for a trainer that died without one

    def __post_init__(self):
        if self.metrics:
            self.metrics = _restore_non_finite(self.metrics)


EVENT_TYPES: dict[str, type[Event]] = {
    cls.__struct_config__.tag: cls
    for cls in (RunStart, Step, Eval, Sample, Memory, System, Checkpoint, Kernel, Log, RunEnd)
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
    v = v if type(v) is int else SCHEMA_VERSION
    t = obj["type"]
    if t not in EVENT_TYPES:
        return Unknown(type=t[:64], v=v)
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


def encode_command(cmd: str) -> bytes:
    if cmd not in COMMANDS:
        raise ProtocolError(f"unknown command {cmd!r}; use one of {', '.join(COMMANDS)}")
    return _encoder.encode({"cmd": cmd}) + b"\n"


def decode_command(line: str | bytes) -> str | None:
    """`{"cmd": "pause"}` (or a bare word, typed by hand) -> "pause"; None for anything else."""
    text = line.decode("utf-8", "replace") if isinstance(line, bytes) else line
    text = text.strip()
    if not text:
        return None
    if text.startswith("{"):
        try:
            obj = _untyped.decode(text)
        except (msgspec.DecodeError, RecursionError):
            return None
        cmd = obj.get("cmd") if isinstance(obj, dict) else None
    else:
        cmd = text
    return cmd if cmd in COMMANDS else None
