"""Dotted keys: {"model": {"n_layer": 2}} <-> {"model.n_layer": 2}, as presets, overrides (`model.n_layer=4`),
run filters and config differences spell them.

A config is a user's data (a preset, the config in a log): MAX_DEPTH bounds how deeply it may nest, so that a
config nested hundreds of levels (or one that contains itself) is one refused item, never a RecursionError."""
from __future__ import annotations

from typing import Any

MAX_DEPTH = 32   # levels of nesting a config may have (presets use three or four)


class NestedTooDeep(ValueError):
    """A config nested more than MAX_DEPTH levels (or containing itself)."""


def nested_deeper_than(obj, limit: int) -> bool:
    """Whether dicts and lists inside `obj` nest more than `limit` levels (walked without recursion, so any
    depth, and a structure that contains itself, is answered)."""
    stack = [(obj, 0)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        if depth >= limit:
            return True
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return False


def flatten(d: dict, prefix: str = "", keep: tuple[str, ...] = (), empty: bool = True,
            _depth: int = 0) -> dict[str, Any]:
    """Nested dicts to dotted keys; lists stay values, and so do the dicts under a key named in `keep` and
    empty dicts (with empty=False an empty dict has no keys to give, and vanishes). Raises NestedTooDeep
    beyond MAX_DEPTH levels."""
    if _depth > MAX_DEPTH:
        raise NestedTooDeep(f"nested deeper than {MAX_DEPTH} levels at {prefix.rstrip('.')[:80]}...")
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and k not in keep and (v or not empty):
            out.update(flatten(v, key + ".", keep, empty, _depth + 1))
        else:
            out[key] = v
    return out


def unflatten(flat: dict[str, Any]) -> dict:
    out: dict = {}
    for key, v in flat.items():
        node = out
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = v
    return out
