"""Preset loading and validation. Pure Python (no torch): the cockpit UI imports this.

A preset is a YAML file (presets/NAME.yaml, or any path in the same schema). Its keys are
checked against a schema: the common keys below, plus the preset's own `model.*`, `data.*` and
`finetune.*` keys (typed by their default values). `profiles.cpu` holds overrides applied when no
CUDA device is present (or `profile=cpu`); `profiles.paper`, where a preset has it, sizes the model as the
paper it follows publishes its smallest configuration (selected by `profile=paper`). `k=v` overrides use dotted keys typed by the schema. What the
model itself needs of its `model.*` keys (their types, n_embd divisible by n_head ...) is checked by its
Config (trainers/models/__init__.py make_config), before the trainer creates anything.

A preset is read with bounds (PresetLoader): a small regular file, nested a few levels, whose aliases do not
expand it beyond a hand-written size. Input files the trainer reads go through read_regular / open_regular:
a named pipe or a device is refused instead of blocking or reading for ever.
"""
from __future__ import annotations

import copy
import difflib
import math
import os
import stat
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from common.atomic import file_kind
from common.cli import BadInput
from common.dotted import flatten as _flatten
from common.dotted import unflatten
from common.paths import NAME_RULE, name_problem, safe_name


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """A preset's dotted keys; `profiles` stays one value (its sections are overrides, not keys), and a section
    with no keys adds none."""
    return _flatten(d, prefix, keep=("profiles",), empty=False)


class ConfigError(BadInput, ValueError):
    """Bad preset or override. str(e) is one line naming the field and the fix."""


# key -> (type, default, (min, max) or None, allowed values or None)
# Types: int, float, bool, str. min/max are inclusive. A default of None is decided by the device at load.
COMMON: dict[str, tuple] = {
    "name": (str, "", None, None),
    "arch": (str, "gpt", None, None),
    "task": (str, "lm", None, ("lm", "sort", "diffusion", "finetune", "autoencoder")),
    "description": (str, "", None, None),
    "device": (str, "auto", None, ("auto", "cpu", "cuda")),
    "profile": (str, "auto", None, ("auto", "full", "cpu", "paper")),
    "kernels": (str, "torch", None, ("torch", "triton")),
    "vram_budget_gb": (float, 12.0, (0.1, 4096.0), None),
    "data.path": (str, "", None, None),
    "data.tokenizer": (str, "char", None, None),  # char, gpt2 or a tokenizer.json (_check_value)
    "data.val_fraction": (float, 0.1, (0.001, 0.5), None),
    "data.order": (str, "random", None, ("random", "sequential")),
    "train.max_steps": (int, 1000, (1, 10**9), None),
    "train.batch_size": (int, 16, (1, 1 << 20), None),  # or `auto`: the fit planner's micro-batch (AUTO)
    "train.grad_accum": (int, 1, (1, 1 << 16), None),
    "train.lr": (float, 1e-3, (0.0, 10.0), None),
    "train.min_lr": (float, 1e-4, (0.0, 10.0), None),
    "train.warmup_steps": (int, 100, (0, 10**9), None),
    "train.lr_decay_steps": (int, 0, (0, 10**9), None),
    "train.schedule": (str, "cosine", None, ("cosine", "wsd")),  # wsd: warm-up, stable, then linear cool-down
    "train.cooldown_frac": (float, 0.4, (0.0, 1.0), None),      # wsd: the share of the steps that cool down
    "train.optimizer": (str, "adamw", None, ("adamw", "muon")),  # muon: Muon + AdamW (trainers/optim.py)
    "train.muon_lr": (float, 0.05, (0.0, 10.0), None),
    "train.muon_momentum": (float, 0.95, (0.0, 0.99999), None),
    "train.weight_decay": (float, 0.1, (0.0, 10.0), None),
    "train.beta1": (float, 0.9, (0.0, 0.99999), None),
    "train.beta2": (float, 0.99, (0.0, 0.99999), None),
    "train.grad_clip": (float, 1.0, (0.0, 1e6), None),
    "train.eval_interval": (int, 250, (1, 10**9), None),
    "train.eval_iters": (int, 20, (1, 10**6), None),
    "train.log_interval": (int, 10, (1, 10**9), None),
    "train.sample_interval": (int, 500, (0, 10**9), None),
    "train.sample_tokens": (int, 200, (1, 100_000), None),
    "train.memory_interval": (int, 500, (0, 10**9), None),
    "train.internals_interval": (int, 50, (0, 10**9), None),  # internals events (trainers/internals.py); 0: off
    "train.checkpoint_interval": (int, 1000, (0, 10**9), None),
    "train.seed": (int, 1337, (0, 2**63 - 1), None),
    "train.dtype": (str, "auto", None, ("auto", "float32", "bfloat16", "float16")),
    "train.activation_checkpointing": (bool, False, None, None),
    "train.skip_nonfinite": (bool, False, None, None),
    "train.compile": (bool, None, None, None),  # torch.compile the model; unset: on for CUDA, off on CPU
    "train.system_interval": (float, 2.0, (0.1, 3600.0), None),
}

# train.batch_size=auto: the trainer plans the micro-batch and grad accumulation that fit the VRAM budget while
# keeping the token batch of the batch size the preset had (trainers/plan.py); load() keeps that batch size in
# cfg[AUTO_FROM].
AUTO = "auto"
AUTO_FROM = "_batch_size_before_auto"
PROFILES = ("cpu", "full", "paper")

# Sections whose keys each preset declares itself (typed by the preset's values).
OPEN_SECTIONS = ("model", "data", "finetune", "sample")

# Ranges for well-known open keys (model sizes must be positive, probabilities in [0, 1]).
OPEN_RANGES: dict[str, tuple] = {
    "model.n_layer": (1, 1000),
    "model.n_head": (1, 1024),
    "model.n_embd": (1, 1 << 16),
    "model.block_size": (1, 1 << 20),
    "model.dropout": (0.0, 1.0),
    "model.n_expert": (1, 1024),
    "model.top_k": (1, 1024),
    "finetune.rank": (1, 4096),
    "finetune.dropout": (0.0, 1.0),
}


def presets_dir() -> Path:
    return Path(str(resources.files("presets")))


def preset_names() -> list[str]:
    return sorted(p.stem for p in presets_dir().glob("*.yaml"))


def preset_path(name_or_path: str) -> Path:
    """A preset name (`cockpit presets`) or the path of a YAML file."""
    p = Path(name_or_path)
    if name_or_path.endswith((".yaml", ".yml")) or os.sep in name_or_path:
        if not p.exists():
            raise ConfigError(f"preset file {name_or_path} not found; pass an existing YAML file or a preset name")
        return p
    cand = presets_dir() / f"{name_or_path}.yaml"
    if cand.is_file():
        return cand
    names = preset_names()
    close = difflib.get_close_matches(name_or_path, names, n=1)
    hint = f"did you mean {close[0]!r}?" if close else "see `cockpit presets`"
    raise ConfigError(f"unknown preset {name_or_path!r}; {hint} (available: {', '.join(names)})")


# --- reading input files ----------------------------------------------------------------------------
def open_regular(path: str | os.PathLike, what: str, fix: str):
    """`path` opened for binary reading, or ConfigError `<what>: is a named pipe (FIFO), not a regular file;
    <fix>` (what: the key and value, e.g. "data.path=x.txt"). Anything but a regular file is refused before it
    is opened (a FIFO blocks its reader for ever, /dev/zero never ends, opening some devices does something),
    and checked again on the open descriptor (opened without blocking), so that nothing swaps it in between."""
    try:
        mode = os.stat(path).st_mode
        if stat.S_ISREG(mode):
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
            mode = os.fstat(fd).st_mode
            if stat.S_ISREG(mode):
                os.set_blocking(fd, True)
                return os.fdopen(fd, "rb")
            os.close(fd)
    except FileNotFoundError:
        raise ConfigError(f"{what}: not found; {fix}") from None
    except (OSError, ValueError) as e:  # ValueError: a NUL in the path
        reason = getattr(e, "strerror", None) or str(e)
        raise ConfigError(f"{what}: cannot open ({reason}); {fix}") from None
    raise ConfigError(f"{what}: is {file_kind(mode)}, not a regular file; {fix}")


def refuse_special(path: str | os.PathLike, what: str, fix: str) -> None:
    """ConfigError when `path` exists as anything but a regular file (a pipe, a device, a directory), for a
    file about to be written: opening a FIFO for writing blocks until someone reads it."""
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        return  # absent (or unreachable): whoever creates it reports what goes wrong
    if not stat.S_ISREG(mode):
        raise ConfigError(f"{what}: is {file_kind(mode)}, not a regular file; {fix}")


def read_regular(path: str | os.PathLike, what: str, fix: str, limit: int | None = None) -> bytes:
    """The bytes of a regular file (open_regular), read with a bound: the size it had when opened (a file that
    grows meanwhile is read no further), refused with ConfigError when that is over `limit` bytes."""
    with open_regular(path, what, fix) as f:
        size = os.fstat(f.fileno()).st_size
        if limit is not None and size > limit:
            raise ConfigError(f"{what}: is {size:,} bytes, more than the {limit:,} this file may have; {fix}")
        try:
            return f.read(size)
        except OSError as e:
            raise ConfigError(f"{what}: cannot read ({e.strerror}); {fix}") from None


# --- reading presets ----------------------------------------------------------------------------------
# A preset is a hand-written file of a few hundred nodes, nested three or four levels deep. The bounds stop
# what a hostile or broken file could do to the loader and to everything that walks the loaded dicts: an
# alias "bomb" (each level of aliases multiplying the size: 9 levels of 9 aliases are 9^9 nodes), a node that
# contains itself (walking it never ends), nesting deep enough to exhaust Python's recursion.
MAX_PRESET_BYTES = 1 << 20
MAX_YAML_NODES = 100_000   # nodes with every alias expanded
MAX_YAML_DEPTH = 50        # levels of nesting, aliases expanded


class PresetTooLarge(yaml.YAMLError):
    """A preset beyond the bounds above; str(e) says which and where."""


class PresetLoader(yaml.SafeLoader):
    """yaml.SafeLoader with bounds: the nesting as it is composed, then the node graph's size and depth with
    every alias expanded (measured on the graph, without expanding anything), and no node inside itself.
    A value the constructor cannot make (a 5000-digit integer, a 13th month) is a YAML error at its line."""

    def __init__(self, stream):
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent, index):
        if self._depth >= MAX_YAML_DEPTH:
            raise PresetTooLarge(f"nested more than {MAX_YAML_DEPTH} levels deep at {_where(self.peek_event())}; "
                                 "a preset nests a few levels, like model: {n_layer: 4}")
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def compose_document(self):
        node = super().compose_document()
        _check_expanded(node)
        return node

    def construct_object(self, node, deep=False):
        try:
            return super().construct_object(node, deep)
        except yaml.YAMLError:
            raise
        except (ValueError, TypeError, AttributeError, OverflowError) as e:
            raise yaml.constructor.ConstructorError(None, None, f"cannot read this value ({e})",
                                                    node.start_mark) from None


def _where(item) -> str:
    mark = getattr(item, "start_mark", None)
    return f"line {mark.line + 1}, column {mark.column + 1}" if mark else "the end"


def _children(node) -> list:
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def _check_expanded(root) -> None:
    """Size and depth of the node graph with aliases expanded (an alias is the node it names, shared), computed
    once per node, depth first without recursion; PresetTooLarge beyond the bounds or for a node in itself."""
    if root is None:
        return
    size: dict[int, int] = {}
    depth: dict[int, int] = {}
    open_nodes: set[int] = set()  # on the current path from the root
    stack = [(root, False)]
    while stack:
        node, finished = stack.pop()
        key = id(node)
        if finished:
            kids = _children(node)
            size[key] = 1 + sum(size[id(k)] for k in kids)
            depth[key] = 1 + max((depth[id(k)] for k in kids), default=0)
            open_nodes.discard(key)
            if size[key] > MAX_YAML_NODES:
                raise PresetTooLarge(f"the {_kind_of(node)} at {_where(node)} holds more than {MAX_YAML_NODES:,} "
                                     "values with its aliases expanded; write out the values a preset needs")
            if depth[key] > MAX_YAML_DEPTH:
                raise PresetTooLarge(f"the {_kind_of(node)} at {_where(node)} nests more than {MAX_YAML_DEPTH} "
                                     "levels deep with its aliases expanded; write out the values a preset needs")
            continue
        if key in size:
            continue
        if key in open_nodes:
            raise PresetTooLarge(f"the {_kind_of(node)} at {_where(node)} contains itself through an alias; "
                                 "an alias must name something outside it")
        open_nodes.add(key)
        stack.append((node, True))
        stack.extend((k, False) for k in _children(node) if id(k) not in size)


def _kind_of(node) -> str:
    return {yaml.MappingNode: "mapping", yaml.SequenceNode: "list"}.get(type(node), "value")


def read_yaml(path: Path) -> dict:
    data = read_regular(path, f"preset file {path}", "give a YAML file", limit=MAX_PRESET_BYTES)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: cannot read preset (UnicodeDecodeError: {e}); save it as UTF-8") from None
    try:
        data = yaml.load(text, Loader=PresetLoader)  # noqa: S506 — a SafeLoader, with bounds
    except PresetTooLarge as e:
        raise ConfigError(f"{path}: {e}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{path}:{where}: YAML syntax error: {problem}; fix the YAML") from None
    if data is None:
        raise ConfigError(f"{path}: preset is empty; it needs at least `name`, `arch` and `task`")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a preset must be a YAML mapping of keys, not {type(data).__name__}")
    return data


def _type_name(t: type) -> str:
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}[t]


def coerce(key: str, value: Any, typ: type, source: str) -> Any:
    """Type a value (from YAML or a k=v string) by the schema; ConfigError names the key."""
    if isinstance(value, str) and typ is not str:
        s = value.strip()
        try:
            if typ is bool:
                if s.lower() in ("true", "1", "yes", "on"):
                    return True
                if s.lower() in ("false", "0", "no", "off"):
                    return False
                raise ValueError(s)
            if typ is int:
                return int(float(s)) if ("e" in s.lower() and float(s).is_integer()) else int(s)
            if typ is float:
                value = float(s)
        except ValueError:
            raise ConfigError(f"{source}: {key}={value!r} must be {_type_name(typ)}") from None
    if typ is float and isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{source}: {key}={value!r} must be a finite number")
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        if not -1e308 < value < 1e308:  # float() of a longer integer overflows
            raise ConfigError(f"{source}: {key}={value} must be a finite number")
        return float(value)
    if typ is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if typ is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if typ is str and value is None:
        return ""
    if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
        raise ConfigError(f"{source}: {key}={value!r} must be {_type_name(typ)}")
    return value


def _schema_for(flat_preset: dict[str, Any]) -> dict[str, tuple]:
    """Common keys plus the preset's own open-section keys, typed by their default values."""
    schema = dict(COMMON)
    for key, v in flat_preset.items():
        if key.split(".")[0] in OPEN_SECTIONS and key not in schema:
            typ = type(v) if isinstance(v, (bool, int, float, str)) else str
            if v is None:
                typ = str
            schema[key] = (typ, v, OPEN_RANGES.get(key), None)
    return schema


def _check_value(key: str, value: Any, spec: tuple, source: str) -> Any:
    typ, _default, rng, choices = spec
    if key == "train.batch_size" and isinstance(value, str) and value.strip().lower() == AUTO:
        return AUTO
    value = coerce(key, value, typ, source)
    if key == "name" and value and name_problem(value):  # it names run directories (common/paths.py)
        raise ConfigError(f"{source}: name={value!r} {name_problem(value)}; a name is {NAME_RULE}, e.g. "
                          f"name={safe_name(value)}")
    if key == "data.tokenizer" and value not in ("char", "gpt2") and not value.endswith(".json"):
        raise ConfigError(f"{source}: {key}={value!r} is not allowed; use char, gpt2 or the path of a tokenizer.json "
                          "(`cockpit data train-tokenizer`)")
    if choices is not None and value not in choices:
        raise ConfigError(f"{source}: {key}={value!r} is not allowed; use one of {', '.join(map(str, choices))}")
    if rng is not None and isinstance(value, (int, float)) and not isinstance(value, bool):
        lo, hi = rng
        if not (lo <= value <= hi):
            raise ConfigError(f"{source}: {key}={value!r} is out of range; use a value in [{lo}, {hi}]")
    return value


def _check_sections(flat: dict[str, Any], source: str) -> None:
    """A dotted key is a value or a section, never both: `model: {"n_layer.x": 1, n_layer: 2}` names model.n_layer
    as a value and as the section holding x."""
    for key in flat:
        parts = key.split(".")
        for i in range(1, len(parts)):
            if ".".join(parts[:i]) in flat:
                raise ConfigError(f"{source}: {'.'.join(parts[:i])!r} is a value and also the section of {key!r}; "
                                  "keep one of them (a key with a dot in it is read as a section)")


def _unknown(key: str, known: list[str], source: str) -> ConfigError:
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    hint = f"did you mean {close[0]!r}?" if close else "see the preset file for valid keys"
    return ConfigError(f"{source}: unknown key {key!r}; {hint}")  # repr: a key may hold a newline


def parse_overrides(items: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        if "=" not in item or item.startswith("="):
            raise ConfigError(f"override {item!r} must look like key=value (e.g. train.max_steps=200)")
        k, v = item.split("=", 1)
        out[k.strip()] = v
    return out


def cuda_available() -> bool:
    """True when a CUDA device can be used, without importing torch in this process when avoidable."""
    env = os.environ.get("COCKPIT_FORCE_CUDA")
    if env is not None:
        return env == "1"
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) == "":
        return False
    import sys

    if "torch" in sys.modules:
        return sys.modules["torch"].cuda.is_available()
    # Cheap probe: an NVIDIA driver exposes this file; torch is not imported by the UI.
    return Path("/proc/driver/nvidia/version").exists()


def load(preset: str, overrides: list[str] | dict[str, str] | None = None, *, profile: str | None = None,
         has_cuda: bool | None = None) -> dict:
    """Load, validate and resolve a preset. Returns a nested dict with `profile` resolved to full/cpu."""
    path = preset_path(preset)
    raw = read_yaml(path)
    source = str(path) if (os.sep in preset or preset.endswith((".yaml", ".yml"))) else f"preset {preset}"
    profiles = raw.pop("profiles", {}) or {}
    if not isinstance(profiles, dict):
        raise ConfigError(f"{source}: `profiles` must be a mapping like `profiles: {{cpu: {{train: {{...}}}}}}`")
    flat_raw = flatten(raw)
    _check_sections(flat_raw, source)
    schema = _schema_for(flat_raw)
    known = sorted(schema)
    cfg: dict[str, Any] = {k: spec[1] for k, spec in COMMON.items()}
    for key, v in flat_raw.items():
        if key not in schema:
            raise _unknown(key, known, source)
        if key not in COMMON and not isinstance(v, (bool, int, float, str, type(None))):
            raise ConfigError(f"{source}: {key}={v!r} must be a single value: a number, true/false or a string")
        cfg[key] = _check_value(key, v, schema[key], source)
    for pname, pvals in profiles.items():
        if pname not in PROFILES:
            raise ConfigError(f"{source}: unknown profile {pname!r}; profiles are `cpu`, `full` and `paper`")
        for key, v in flatten(pvals or {}).items():
            if key not in schema:
                raise _unknown(key, known, f"{source} profiles.{pname}")
            _check_value(key, v, schema[key], f"{source} profiles.{pname}")
    if isinstance(overrides, list):
        overrides = parse_overrides(overrides)
    overrides = dict(overrides or {})
    # profile / device overrides decide which profile applies, so read them first.
    for key in ("profile", "device"):
        if key in overrides:
            cfg[key] = _check_value(key, overrides[key], schema[key], "override")
    if profile:
        cfg["profile"] = profile
    if cfg["device"] == "cuda":
        if has_cuda is None and not cuda_available():
            raise ConfigError("device=cuda, but this machine has no CUDA device (no NVIDIA driver is loaded); use "
                              "device=cpu, or device=auto to take a GPU where there is one")
        has_cuda = True
    elif cfg["device"] == "cpu":
        has_cuda = False
    elif has_cuda is None:
        has_cuda = cuda_available()
    resolved = cfg["profile"]
    if resolved == "auto":
        resolved = "full" if has_cuda else "cpu"
    if resolved == "paper" and "paper" not in profiles:
        raise ConfigError(f"{source}: profile=paper, but this preset has no `profiles.paper` (a published-scale "
                          f"size); use profile=full or a preset that has one (`cockpit presets`)")
    if resolved in profiles:
        for key, v in flatten(profiles[resolved] or {}).items():
            cfg[key] = _check_value(key, v, schema[key], f"{source} profiles.{resolved}")
    sized_batch = cfg["train.batch_size"]
    for key, v in overrides.items():
        if key not in schema:
            raise _unknown(key, known, "override")
        cfg[key] = _check_value(key, v, schema[key], "override")
    cfg["profile"] = resolved
    if cfg["device"] == "auto":
        cfg["device"] = "cuda" if has_cuda else "cpu"
    if cfg["train.compile"] is None:  # on a CPU compiling takes tens of seconds for a step ~20% faster
        cfg["train.compile"] = cfg["device"] == "cuda"
    if not cfg["name"]:
        cfg["name"] = safe_name(path.stem)
    out = unflatten(cfg)
    out["_has_profiles"] = sorted(profiles)
    if cfg["train.batch_size"] == AUTO:
        out[AUTO_FROM] = sized_batch if sized_batch != AUTO else COMMON["train.batch_size"][1]
    return out


def strip_private(cfg: dict) -> dict:
    return {k: copy.deepcopy(v) for k, v in cfg.items() if not k.startswith("_")}


def check_section_keys(section: str, given: dict, known, where: str = "") -> None:
    """ConfigError for a key of `section` that is not in `known`, with the closest known key as a hint."""
    for key in given:
        if key not in known:
            close = difflib.get_close_matches(key, list(known), n=1)
            hint = f"did you mean '{section}.{close[0]}'?" if close else f"use {', '.join(known)}"
            raise ConfigError(f"unknown key '{section}.{key}'{where}; {hint}")


def check_resolved(cfg: object, source: str, fix: str = "resume from another checkpoint") -> dict:
    """A resolved config that comes from a file (a checkpoint's), checked as a preset is: a mapping, known keys,
    the same types and ranges. Common keys it lacks (written by an older cockpit) take their defaults."""
    damaged = f"{source}: the checkpoint's config is damaged"
    if not isinstance(cfg, dict):
        raise ConfigError(f"{damaged} (a {type(cfg).__name__}, not a mapping); {fix}")
    try:
        flat = flatten(strip_private(cfg))
    except RecursionError:
        raise ConfigError(f"{damaged} (nested too deeply); {fix}") from None
    for key in flat:
        if not isinstance(key, str) or not key.split(".")[0] or len(key) > 200:
            raise ConfigError(f"{damaged} (key {str(key)[:60]!r}); {fix}")
    for key in ("name", "arch", "task"):
        if not isinstance(flat.get(key), str) or not flat[key]:
            raise ConfigError(f"{damaged} (no {key}); {fix}")
    _check_sections(flat, source)
    schema = _schema_for(flat)
    out: dict[str, Any] = {k: spec[1] for k, spec in COMMON.items()}
    for key, v in flat.items():
        if key not in schema:
            raise ConfigError(f"{damaged}: key {key!r} is unknown to this cockpit; {fix}")
        if key not in COMMON and not isinstance(v, (bool, int, float, str, type(None))):
            raise ConfigError(f"{damaged}: {key}={str(v)[:60]!r} is not a single value; {fix}")
        out[key] = _check_value(key, v, schema[key], f"{source}: the checkpoint's config")
    has_cuda = cuda_available() if "auto" in (out["device"], out["profile"]) else None
    if out["device"] == "auto":
        out["device"] = "cuda" if has_cuda else "cpu"
    if out["profile"] == "auto":
        out["profile"] = "full" if has_cuda else "cpu"
    if out["train.compile"] is None:
        out["train.compile"] = out["device"] == "cuda"
    return unflatten(out)


def override_resolved(cfg: dict, overrides: dict[str, str] | list[str]) -> dict:
    """Apply k=v overrides to an already-resolved config (e.g. one stored in a checkpoint, on resume)."""
    if isinstance(overrides, list):
        overrides = parse_overrides(overrides)
    flat = flatten(strip_private(cfg))
    for key, v in overrides.items():
        if key not in flat:
            raise _unknown(key, sorted(flat), "override")
        old = flat[key]
        typ = type(old) if isinstance(old, (bool, int, float, str)) else str
        spec = COMMON.get(key, (typ, old, OPEN_RANGES.get(key), None))
        flat[key] = _check_value(key, v, spec, "override")
    out = unflatten(flat)
    for k, v in cfg.items():
        if k.startswith("_"):
            out[k] = v
    if flat.get("train.batch_size") == AUTO and AUTO_FROM not in out:
        before = flatten(strip_private(cfg)).get("train.batch_size")
        out[AUTO_FROM] = before if isinstance(before, int) else COMMON["train.batch_size"][1]
    return out
