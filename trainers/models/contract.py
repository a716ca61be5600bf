"""What a model file provides: the contract the tasks and the training loop rely on.

trainers/models/<arch>.py defines
    Config   a dataclass of the model's hyper-parameters: the preset's `model.*` keys, plus those a task
             supplies when it takes them (vocab_size, kernels, activation_checkpointing, image_size, ...)
    Model    an nn.Module built as Model(Config(...)) that keeps its config as `model.config` and meets one
             of the two contracts below.

LanguageModel (tasks lm, sort, finetune)
    forward(idx, targets=None) -> (logits, loss)
        idx, targets (B, T) token ids; targets -1 are ignored. With targets: logits (B, T, vocab), or None
        where a fused classifier never builds them, and loss, the mean cross-entropy (plus any auxiliary
        loss in training). Without: logits whose last position [:, -1] predicts the next token, loss None.
    generate(idx, max_new_tokens, temperature=1.0, top_k=None, generator=None) -> (B, T + max_new_tokens)
    the optional hooks, whose defaults every language model inherits from LanguageModelBase:
        on_step(optimizer, step, max_steps, lr) -> lr    before each optimizer step (BitNet's two stages)
        metrics() -> {name: number}                        added to each eval's metrics (BitNet, MoE)
        eval_fields() -> {field: value}                   extra fields of the eval event (MoE's `experts`)

Denoiser (task diffusion)
    forward(x, t, y) -> eps    x (B, C, H, W) noisy images, t (B,) timesteps, y (B,) class ids (num_classes:
                               the null class) -> the predicted noise (B, C, H, W)

build_model (trainers/models/__init__.py) checks every model against its contract when it is built, so a
model that lacks part of it fails there, with one message naming the arch and what is missing.
"""
from __future__ import annotations

import dataclasses
import inspect
from typing import Any, Protocol

import torch
import torch.nn as nn


class LanguageModel(Protocol):
    config: Any

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None
                ) -> tuple[torch.Tensor | None, torch.Tensor | None]: ...

    def generate(self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
                 generator: torch.Generator | None = None) -> torch.Tensor: ...

    def on_step(self, optimizer: torch.optim.Optimizer, step: int, max_steps: int, lr: float) -> float: ...

    def metrics(self) -> dict[str, float]: ...

    def eval_fields(self) -> dict[str, Any]: ...


class Denoiser(Protocol):
    config: Any

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor: ...


class LanguageModelBase(nn.Module):
    """The optional hooks of a LanguageModel, doing nothing: a model overrides the ones it needs."""

    def on_step(self, optimizer: torch.optim.Optimizer, step: int, max_steps: int, lr: float) -> float:
        return lr

    def metrics(self) -> dict[str, float]:
        return {}

    def eval_fields(self) -> dict[str, Any]:
        return {}


CONTRACTS = (LanguageModel, Denoiser)


def _methods(contract) -> dict[str, inspect.Signature]:
    return {name: inspect.signature(fn) for name, fn in vars(contract).items()
            if inspect.isfunction(fn) and not name.startswith("_")}


def _shown(params) -> str:
    return ", ".join(p.name if p.default is inspect.Parameter.empty else f"{p.name}={p.default!r}"
                     for p in params)


def _fits(have: list[inspect.Parameter], want: list[inspect.Parameter]) -> bool:
    """The model's parameters start with the contract's, by name, optional where the contract's are; any
    further ones are optional."""
    if len(have) < len(want):
        return False
    for h, w in zip(have, want):
        if h.name != w.name or (w.default is not inspect.Parameter.empty and h.default is inspect.Parameter.empty):
            return False
    return all(h.default is not inspect.Parameter.empty for h in have[len(want):])


def class_gaps(model_cls: type, contract) -> list[str]:
    """What the class `model_cls` lacks of `contract`: each missing or mismatched method, in a few words."""
    gaps = []
    for name, sig in _methods(contract).items():
        fn = getattr(model_cls, name, None)
        want = list(sig.parameters.values())[1:]  # without self
        if not callable(fn):
            gaps.append(f"no {name}({_shown(want)})")
            continue
        have = list(inspect.signature(fn).parameters.values())[1:]
        if not _fits(have, want):
            gaps.append(f"{name}({_shown(have)}) where the contract has {name}({_shown(want)})")
    return gaps


def instance_gaps(model: nn.Module, contract) -> list[str]:
    """What a built model lacks of the attributes `contract` declares (e.g. `config`, a dataclass)."""
    gaps = []
    for name in getattr(contract, "__annotations__", {}):
        if not hasattr(model, name):
            gaps.append(f"no `{name}` attribute")
        elif name == "config" and not dataclasses.is_dataclass(model.config):
            gaps.append("`config` is not the Config dataclass it was built from")
    return gaps
