"""Every model file meets the contract of trainers/models/contract.py, checked when the model is built: a model
that lacks part of it, or an arch that does not suit the task, fails there with one line, not mid-run."""
from __future__ import annotations

import types
from dataclasses import dataclass

import pytest
import torch
import torch.nn as nn

from trainers import config, models
from trainers.config import ConfigError
from trainers.models.contract import Autoencoder, Denoiser, LanguageModel, LanguageModelBase

LANGUAGE_MODELS = {"bitnet", "gpt", "llama", "mamba", "mingpt", "moe", "retnet", "rwkv", "speedrun"}
AUTOENCODERS = {"vae"}


@pytest.mark.parametrize("arch", models.arch_names())
def test_every_shipped_arch_meets_the_contract_of_its_kind(arch):
    kind = LanguageModel if arch in LANGUAGE_MODELS else Autoencoder if arch in AUTOENCODERS else Denoiser
    with torch.device("meta"):
        model = models.build_model(arch, {}, contract=kind)
    assert isinstance(model, LanguageModelBase) == (kind is LanguageModel)


def test_a_language_model_without_hooks_of_its_own_inherits_defaults_that_change_nothing():
    model = models.build_model("gpt", dict(n_layer=1, n_head=1, n_embd=8, block_size=8), vocab_size=11)
    assert model.on_step(None, 1, 10, 0.5) == 0.5
    assert model.metrics() == {} and model.eval_fields() == {}


@dataclass
class ToyConfig:
    vocab_size: int = 11


class Incomplete(nn.Module):
    """A language model written without generate(), without the hooks' defaults and without `config`."""

    def __init__(self, cfg):
        super().__init__()
        self.emb = nn.Embedding(cfg.vocab_size, 4)

    def forward(self, idx, targets=None):
        return self.emb(idx), None


class NoConfig(LanguageModelBase):
    def __init__(self, cfg):
        super().__init__()

    def forward(self, idx, targets=None):
        return idx, None

    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, generator=None):
        return idx


def with_toy_arch(monkeypatch, model_cls):
    toy = types.ModuleType("trainers.models.toy")
    toy.Config, toy.Model = ToyConfig, model_cls
    monkeypatch.setattr(models, "arch_module", lambda arch: toy)


def test_a_model_missing_part_of_the_contract_fails_at_build_naming_the_arch_and_each_gap(monkeypatch):
    with_toy_arch(monkeypatch, Incomplete)
    with pytest.raises(ConfigError) as e:
        models.build_model("toy", {}, contract=LanguageModel)
    msg = str(e.value)
    assert msg.startswith("arch toy (trainers/models/toy.py) does not meet the LanguageModel contract")
    for gap in ("no generate(idx, max_new_tokens, temperature=1.0, top_k=None, generator=None)",
                "no on_step(optimizer, step, max_steps, lr)", "no metrics()", "no eval_fields()"):
        assert gap in msg
    assert "\n" not in msg


def test_a_model_that_does_not_keep_its_config_fails_at_build(monkeypatch):
    with_toy_arch(monkeypatch, NoConfig)
    with pytest.raises(ConfigError, match=r"arch toy .* LanguageModel contract .*: Model has no `config` attribute"):
        models.build_model("toy", {})


def test_an_arch_of_the_wrong_kind_for_the_task_is_bad_input_naming_the_archs_that_fit():
    from trainers.tasks import load_task

    cfg = config.load("mingpt-sort", ["arch=unet"], has_cuda=False)
    with pytest.raises(ConfigError) as e:
        load_task(cfg, torch.device("cpu")).build_model()
    assert str(e.value) == ("arch unet (trainers/models/unet.py) is a Denoiser; this task needs a LanguageModel "
                            "(trainers/models/contract.py): use one of bitnet, gpt, llama, mamba, mingpt, moe, retnet, rwkv, speedrun")
