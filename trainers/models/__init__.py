"""Models, one architecture per file. `trainers.models.<arch>` defines `Config` (a dataclass) and `Model`,
which meets one of the contracts of trainers/models/contract.py (LanguageModel, Denoiser or
Autoencoder).

An arch name maps to its module by replacing '-' with '_' (arch `gpt` -> trainers/models/gpt.py).

check_model refuses, without building anything, what build_model would fail on: an arch that does not meet
the task's contract, `model.*` keys the Config does not have or of the wrong type, and the values its
__post_init__ refuses (n_embd not divisible by n_head ...). The trainer runs it before it creates a run.
"""
from __future__ import annotations

import dataclasses
import difflib
import importlib
import pkgutil
import typing

import torch.nn as nn

from trainers.config import ConfigError, coerce
from trainers.models.contract import CONTRACTS, class_gaps, instance_gaps

PLAIN_TYPES = (int, float, bool, str)  # what a Config field may be typed; make_config coerces values to them


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


def _where(arch: str, mod) -> str:
    return f"arch {arch} (trainers/models/{mod.__name__.rsplit('.', 1)[-1]}.py)"


def make_config(arch: str, model_cfg: dict, **extra):
    """Build the arch's Config from preset `model.*` keys, each typed by its field (a preset's `n_layer: "4"` is
    4, `"four"` or 1.5 is refused; a bool is never a number); unknown keys and the values the Config's
    __post_init__ refuses raise ConfigError naming the key."""
    mod = arch_module(arch)
    where = _where(arch, mod)
    if not dataclasses.is_dataclass(getattr(mod, "Config", None)):
        raise ConfigError(f"{where} must define a `Config` dataclass")
    fields = {f.name: f for f in dataclasses.fields(mod.Config)}
    types = typing.get_type_hints(mod.Config)
    kwargs = {}
    for k, v in {**model_cfg, **extra}.items():
        if k not in fields:
            if k in extra:
                continue  # task-supplied keys (vocab_size, kernels) that this arch does not take
            close = difflib.get_close_matches(k, sorted(fields), n=1)
            hint = f"did you mean 'model.{close[0]}'?" if close else f"valid keys: {', '.join(sorted(fields))}"
            raise ConfigError(f"unknown key 'model.{k}' for arch {arch}; {hint}")
        typ = types.get(k)
        if typ in PLAIN_TYPES:
            try:
                v = coerce(f"model.{k}", v, typ, where)
            except ConfigError as e:
                default = fields[k].default
                example = f"; e.g. model.{k}={default}" if default is not dataclasses.MISSING else ""
                raise ConfigError(f"{e}{example}") from None
        kwargs[k] = v
    try:
        return mod.Config(**kwargs)
    except (ValueError, TypeError) as e:  # the Config's __post_init__: `model.<key>=<value> <rule>; <fix>`
        message = (str(e).splitlines() or [type(e).__name__])[0]
        raise ConfigError(message if message.startswith("model.") else f"{where}: {message}") from None


def check_model(arch: str, model_cfg: dict, *, contract: type | None = None, **extra) -> None:
    """Refuse (ConfigError) what build_model would fail on, without building the model: the arch's module
    against `contract`, then its Config from these keys."""
    model_module(arch, contract)
    make_config(arch, model_cfg, **extra)


def model_module(arch: str, contract: type | None = None):
    """The arch's module, (module, the contract its Model meets), checked against `contract`
    (trainers/models/contract.py; None: either of them). A model file that lacks part of it raises
    ConfigError naming the arch and what is missing."""
    mod = arch_module(arch)
    where = _where(arch, mod)
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
            raise ConfigError(f"{where} is {article(other.__name__)}; this task needs {article(contract.__name__)} "
                              f"(trainers/models/contract.py): use one of {fits}")
        raise ConfigError(f"{_contract_error(where, contract, gaps[contract])}; use an arch that meets it ({fits})")
    return mod, met


def build_model(arch: str, model_cfg: dict, *, contract: type | None = None, **extra) -> nn.Module:
    """The arch's Model from its Config (make_config), checked against `contract` (model_module) before and
    after it is built."""
    mod, met = model_module(arch, contract)
    model = mod.Model(make_config(arch, model_cfg, **extra))
    missing = instance_gaps(model, met)
    if missing:
        raise ConfigError(_contract_error(_where(arch, mod), met, missing))
    return model


def article(noun: str) -> str:
    """'a Denoiser', 'an Autoencoder'."""
    return f"{'an' if noun[0].lower() in 'aeiou' else 'a'} {noun}"


def _contract_error(where: str, contract, gaps: list[str]) -> str:
    return (f"{where} does not meet the {contract.__name__} contract (trainers/models/contract.py): "
            f"Model has {'; '.join(gaps)}")
