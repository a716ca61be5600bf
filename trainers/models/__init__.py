"""Models, one architecture per file. `trainers.models.<arch>` defines `Config` (a dataclass) and `Model`.

An arch name maps to its module by replacing '-' with '_' (arch `gpt` -> trainers/models/gpt.py).
"""
from __future__ import annotations

import dataclasses
import difflib
import importlib
import pkgutil

from trainers.config import ConfigError


def arch_names() -> list[str]:
    import trainers.models as pkg

    return sorted(m.name for m in pkgutil.iter_modules(pkg.__path__) if not m.name.startswith("_"))


def arch_module(arch: str):
    name = arch.replace("-", "_")
    if name not in arch_names():
        close = difflib.get_close_matches(name, arch_names(), n=1)
        hint = f"did you mean '{close[0]}'?" if close else f"use one of {', '.join(arch_names())}"
        raise ConfigError(f"arch '{arch}' is not a known architecture; {hint}")
    return importlib.import_module(f"trainers.models.{name}")


def make_config(arch: str, model_cfg: dict, **extra):
    """Build the arch's Config from preset `model.*` keys; unknown keys raise ConfigError."""
    mod = arch_module(arch)
    fields = {f.name for f in dataclasses.fields(mod.Config)}
    kwargs = {}
    for k, v in {**model_cfg, **extra}.items():
        if k not in fields:
            if k in extra:
                continue  # task-supplied keys (vocab_size, kernels) that this arch does not take
            close = difflib.get_close_matches(k, sorted(fields), n=1)
            hint = f"did you mean 'model.{close[0]}'?" if close else f"valid keys: {', '.join(sorted(fields))}"
            raise ConfigError(f"unknown key 'model.{k}' for arch {arch}; {hint}")
        kwargs[k] = v
    return mod.Config(**kwargs)


def build_model(arch: str, model_cfg: dict, **extra):
    mod = arch_module(arch)
    return mod.Model(make_config(arch, model_cfg, **extra))
