"""Models, one architecture per file. `trainers.models.<arch>` defines `Config` (a dataclass) and `Model`,
which meets one of the contracts of trainers/models/contract.py (LanguageModel or Denoiser).

An arch name maps to its module by replacing '-' with '_' (arch `gpt` -> trainers/models/gpt.py).
"""
from __future__ import annotations

import dataclasses
import difflib
import importlib
import pkgutil

import torch.nn as nn

from trainers.config import ConfigError
from trainers.models.contract import CONTRACTS, class_gaps, instance_gaps


def arch_names() -> list[str]:
    import trainers.models as pkg

    return sorted(m.name for m in pkgutil.iter_modules(pkg.__path__)
                  if not m.name.startswith("_") and m.name != "contract")


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


def build_model(arch: str, model_cfg: dict, *, contract: type | None = None, **extra) -> nn.Module:
    """The arch's Model, checked against `contract` (trainers/models/contract.py; None: either of them).
    A model file that lacks part of it raises ConfigError naming the arch and what is missing."""
    mod = arch_module(arch)
    where = f"arch {arch} (trainers/models/{mod.__name__.rsplit('.', 1)[-1]}.py)"
    if not isinstance(getattr(mod, "Model", None), type) or not issubclass(mod.Model, nn.Module) or \
            not dataclasses.is_dataclass(getattr(mod, "Config", None)):
        raise ConfigError(f"{where} must define a `Config` dataclass and a `Model` nn.Module")
    wanted = (contract,) if contract is not None else CONTRACTS
    gaps = {c: class_gaps(mod.Model, c) for c in wanted}
    met = next((c for c in wanted if not gaps[c]), None)
    if met is None:
        closest = min(wanted, key=lambda c: len(gaps[c]))
        if contract is None:
            raise ConfigError(_contract_error(where, closest, gaps[closest]))
        fits = ", ".join(a for a in arch_names() if not class_gaps(arch_module(a).Model, contract))
        other = next((c for c in CONTRACTS if c is not contract and not class_gaps(mod.Model, c)), None)
        if other is not None:  # a model of the other kind: the arch does not suit the task
            raise ConfigError(f"{where} is a {other.__name__}; this task needs a {contract.__name__} "
                              f"(trainers/models/contract.py): use one of {fits}")
        raise ConfigError(f"{_contract_error(where, contract, gaps[contract])}; use an arch that meets it ({fits})")
    model = mod.Model(make_config(arch, model_cfg, **extra))
    missing = instance_gaps(model, met)
    if missing:
        raise ConfigError(_contract_error(where, met, missing))
    return model


def _contract_error(where: str, contract, gaps: list[str]) -> str:
    return (f"{where} does not meet the {contract.__name__} contract (trainers/models/contract.py): "
            f"Model has {'; '.join(gaps)}")
