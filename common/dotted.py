"""Dotted keys: {"model": {"n_layer": 2}} <-> {"model.n_layer": 2}, as presets, overrides (`model.n_layer=4`),
run filters and config differences spell them."""
from __future__ import annotations

from typing import Any


def flatten(d: dict, prefix: str = "", keep: tuple[str, ...] = (), empty: bool = True) -> dict[str, Any]:
    """Nested dicts to dotted keys; lists stay values, and so do the dicts under a key named in `keep` and
    empty dicts (with empty=False an empty dict has no keys to give, and vanishes)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and k not in keep and (v or not empty):
            out.update(flatten(v, key + ".", keep, empty))
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
