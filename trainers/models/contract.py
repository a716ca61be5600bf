"""What a model file provides: the contract the tasks and the training loop rely on.

trainers/models/<arch>.py defines
    Config   a dataclass of the model's hyper-parameters: the preset's `model.*` keys, plus those a task
             supplies when it takes them (vocab_size, kernels, activation_checkpointing, image_size, ...).
             Its field types are what the keys must be (make_config checks them), and its __post_init__
             refuses the values the model cannot be built with (n_embd not divisible by n_head ...), with
             the checks at the end of this file: a ValueError naming `model.<key>` and the fix, which
             make_config turns into the one-line error a user sees before anything is created.
    Model    an nn.Module built as Model(Config(...)) that keeps its config as `model.config` and meets one
             of the contracts below.

LanguageModel (tasks lm, sort, finetune)
    forward(idx, targets=None) -> (logits, loss)
        idx, targets (B, T) token ids; negative targets are ignored (`ignored`): -1, nanoGPT's and minGPT's
        mark, and -100, Hugging Face's, which instruction data puts on prompt tokens. With targets: logits
        (B, T, vocab), or None where a fused classifier never builds them, and loss, the mean cross-entropy
        (plus any auxiliary loss in training). Without: logits whose last position [:, -1] predicts the next
        token, loss None.
    generate(idx, max_new_tokens, temperature=1.0, top_k=None, generator=None) -> (B, T + max_new_tokens)
    the optional hooks, whose defaults every language model inherits from LanguageModelBase:
        on_step(optimizer, step, max_steps, lr) -> lr    before each optimizer step (BitNet's two stages)
        metrics() -> {name: number}                        added to each eval's metrics (BitNet, MoE)
        eval_fields() -> {field: value}                   extra fields of the eval event (MoE's `experts`)
        internals(idx, decode) -> [Array]                 what the model does inside on a probe idx (1, T):
                                                          the arrays of the `internals` event (attention maps,
                                                          routing, decays ...; trainers/internals.py); decode
                                                          turns token ids into their text

Denoiser (task diffusion)
    forward(x, t, y) -> eps    x (B, C, H, W) noisy images, t (B,) timesteps, y (B,) class ids (num_classes:
                               the null class) -> the predicted noise (B, C, H, W)

Autoencoder (task autoencoder; its checkpoints are the latent space of latent diffusion, trainers/latent.py)
    encode(x) -> (mean, logvar)   x (B, C, H, W) in [-1, 1] -> the posterior q(z|x) = N(mean, exp(logvar)),
                                  each (B, latent_channels, H / factor, W / factor)
    decode(z) -> x                z (B, latent_channels, h, w) -> the reconstruction (B, C, h * factor, w * factor)
    forward(x, noise=None) -> (reconstruction, mean, logvar)
                                  decodes z = mean + exp(logvar / 2) * noise (the reparameterisation; noise
                                  (B, latent_channels, h, w) drawn by the task), or z = mean without noise
    its Config has latent_channels and factor (the downsampling of H and W)

build_model (trainers/models/__init__.py) checks every model against its contract when it is built, so a
model that lacks part of it fails there, with one message naming the arch and what is missing.
"""
from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from typing import Any, Protocol

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from kernels import integrate
from kernels.logits import cross_entropy, mask_padding

IGNORE = -1  # the target the losses skip (their ignore_index); `ignored` maps every negative target to it


def ignored(targets: torch.Tensor) -> torch.Tensor:
    """targets (B, T) with every negative id at IGNORE: Hugging Face's -100 labels (trainers/instruct.py) are
    skipped by the same ignore_index as nanoGPT's -1, instead of indexing out of the vocabulary."""
    return targets.clamp_min(IGNORE)


class LanguageModel(Protocol):
    config: Any

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None
                ) -> tuple[torch.Tensor | None, torch.Tensor | None]: ...

    def generate(self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
                 generator: torch.Generator | None = None) -> torch.Tensor: ...

    def on_step(self, optimizer: torch.optim.Optimizer, step: int, max_steps: int, lr: float) -> float: ...

    def metrics(self) -> dict[str, float]: ...

    def eval_fields(self) -> dict[str, Any]: ...

    def internals(self, idx: torch.Tensor, decode: Callable[[list[int]], list[str]]) -> list[dict]: ...


class Denoiser(Protocol):
    config: Any

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor: ...


def through_blocks(blocks, x: torch.Tensor, *args, checkpointed: bool = False) -> torch.Tensor:
    """x through each block in turn (block(x, *args)). checkpointed (train.activation_checkpointing, while
    training): each block's activations are recomputed in backward instead of kept, torch.utils.checkpoint."""
    for block in blocks:
        x = checkpoint(block, x, *args, use_reentrant=False) if checkpointed else block(x, *args)
    return x


def head_and_loss(x: torch.Tensor, head: nn.Linear, targets: torch.Tensor | None = None, fused: bool = False,
                  vocab: int | None = None, l2wrap: float = 0.0):
    """How a language model's forward ends, from the final hidden states x (B, T, C): without targets, the
    logits of the last position only (generation needs no more); with them, the logits (B, T, V) and the
    mean cross-entropy, negative targets ignored; fused (kernels=triton), the loss alone from the fused
    linear + cross-entropy kernel, which never builds the logits.
    vocab: the head's first `vocab` rows are the classes, the rest pad the vocabulary (GPT's
    vocab_pad_multiple): their logits are -inf, so the loss is the unpadded one and sampling never draws them.
    l2wrap: RWKV-LM's L2Wrap factor on the logits (kernels/logits.py; 0: off)."""
    if targets is None:
        return mask_padding(head(x[:, [-1], :]), vocab), None
    targets = ignored(targets)
    if fused:
        return None, integrate.linear_cross_entropy(x, head.weight, targets, ignore_index=IGNORE, vocab=vocab,
                                                    l2wrap=l2wrap)
    logits = mask_padding(head(x), vocab)
    return logits, cross_entropy(logits, targets, ignore_index=IGNORE, l2wrap=l2wrap)


def sample_next(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """The next token (B, 1) from the last position's logits (B, vocab), as nanoGPT samples: divide by the
    temperature, keep the top_k largest, draw from the softmax (in float32, whatever the logits' dtype)."""
    logits = logits.float() / max(temperature, 1e-6)
    if top_k is not None:
        v, _ = torch.topk(logits, min(top_k, logits.size(-1)))
        logits[logits < v[:, [-1]]] = -float("inf")
    return torch.multinomial(torch.softmax(logits, dim=-1), num_samples=1, generator=generator)


class LanguageModelBase(nn.Module):
    """What every language model shares: generation as nanoGPT does it (each sampled token fed back, the
    context cropped to config.block_size), and the optional hooks, doing nothing. A model overrides what it
    does differently."""

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """idx (B, T) -> (B, T + max_new_tokens): autoregressive sampling, one full forward per token."""
        for _ in range(max_new_tokens):
            idx_cond = idx if idx.size(1) <= self.config.block_size else idx[:, -self.config.block_size:]
            logits, _ = self(idx_cond)
            idx = torch.cat((idx, sample_next(logits[:, -1, :], temperature, top_k, generator)), dim=1)
        return idx

    def on_step(self, optimizer: torch.optim.Optimizer, step: int, max_steps: int, lr: float) -> float:
        return lr

    def metrics(self) -> dict[str, float]:
        return {}

    def eval_fields(self) -> dict[str, Any]:
        return {}

    def internals(self, idx: torch.Tensor, decode: Callable[[list[int]], list[str]]) -> list[dict]:
        return []


class RecurrentLanguageModelBase(LanguageModelBase):
    """A language model with a recurrent form (Mamba, RWKV, RetNet): it provides
        init_state(batch, device) -> state          the state before any token
        step(token (B,), state) -> (logits (B, vocab), state)   one token in O(1) of the context length
    and generates from it: the prompt goes through the recurrence, then one token per step from the carried
    state (no context is re-read and none is cropped)."""

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        state = self.init_state(idx.size(0), idx.device)
        for t in range(idx.size(1)):
            logits, state = self.step(idx[:, t], state)
        out = [idx]
        for i in range(max_new_tokens):
            if i > 0:
                logits, state = self.step(out[-1][:, 0], state)
            out.append(sample_next(logits, temperature, top_k, generator))
        return torch.cat(out, dim=1)


class Autoencoder(Protocol):
    config: Any

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...

    def decode(self, z: torch.Tensor) -> torch.Tensor: ...

    def forward(self, x: torch.Tensor, noise: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]: ...


CONTRACTS = (LanguageModel, Denoiser, Autoencoder)


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


# --- Config checks: what a Config's __post_init__ raises (ValueError: `model.<key>=<value> <rule>; <fix>`) ----
def require(ok: bool, cfg, key: str, rule: str) -> None:
    """The general form: `model.<key>=<value> <rule>` unless ok."""
    if not ok:
        raise ValueError(f"model.{key}={getattr(cfg, key)!r} {rule}")


def at_least(cfg, low: float, *keys: str) -> None:
    for key in keys:
        require(getattr(cfg, key) >= low, cfg, key, f"must be at least {low}")


def fraction(cfg, *keys: str) -> None:
    """Probabilities such as dropout: in [0, 1) (1 would drop everything)."""
    for key in keys:
        require(0.0 <= getattr(cfg, key) < 1.0, cfg, key, "must be in [0, 1), e.g. 0.1")


def one_of(cfg, key: str, choices) -> None:
    require(getattr(cfg, key) in choices, cfg, key, f"must be one of {', '.join(map(str, choices))}")


def divisible(cfg, key: str, by: str, why: str, times: int = 1) -> None:
    """cfg.<key> a multiple of times * cfg.<by>, the fix naming the nearest multiples."""
    step = times * getattr(cfg, by)
    value = getattr(cfg, key)
    if step <= 0 or value % step == 0:
        return
    what = f"model.{by}={getattr(cfg, by)}" if times == 1 else f"{times} x model.{by} = {step}"
    lower, upper = value - value % step, value - value % step + step
    near = f"{lower} or {upper}" if lower > 0 else f"{upper}"
    raise ValueError(f"model.{key}={value} must be divisible by {what} ({why}); use model.{key}={near}, or "
                     f"change model.{by}")
