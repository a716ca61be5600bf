"""GPT: a decoder-only transformer, written for cockpit in the manner of nanoGPT's model.py.

    x_0   = wte[idx] + wpe[pos]                                  (token + learned position embedding)
    x_l+1 = x_l + Attn(LN(x_l));  x_l+1 = x_l+1 + MLP(LN(x_l+1))    (pre-norm residual blocks)
    logits = LN(x_L) @ wte^T                                      (weight tying, Press & Wolf 2017)

Attention is causal scaled dot-product attention, softmax(QK^T / sqrt(d)) V (Vaswani et al. 2017),
through torch's SDPA (flash / memory-efficient kernels where the device has them).

Vocabulary padding (nanoGPT: "GPT-2 vocab_size of 50257, padded up to nearest multiple of 64 for
efficiency"): with vocab_pad_multiple > 1 the embedding and the tied head get rows up to the next multiple
(50,257 -> 50,304), so the head's matmul has tensor-core friendly sizes. The padding ids are never inputs,
and their logits are -inf (contract.py head_and_loss): the loss is the unpadded model's, their gradient 0,
and generation never samples them. nanoGPT leaves them as learned logits the model pushes down; masking
them keeps the loss exactly that of the 50,257-way softmax from the first step.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from kernels.integrate import GELUTanh, LayerNorm
from trainers.internals import attention_arrays, causal_attention, logit_lens
from trainers.models.contract import LanguageModelBase, at_least, divisible, fraction, head_and_loss, through_blocks


@dataclass
class Config:
    vocab_size: int = 65
    block_size: int = 256
    n_layer: int = 6
    n_head: int = 6
    n_embd: int = 384
    dropout: float = 0.0
    bias: bool = False          # biases in Linear and LayerNorm (GPT-2: True)
    vocab_pad_multiple: int = 1  # embedding/head rows padded to a multiple of this (gpt2-124m: 64, nanoGPT's 50304)
    activation_checkpointing: bool = False
    kernels: str = "torch"      # torch | triton (fused LayerNorm / GELU / linear+cross-entropy)

    def __post_init__(self):  # what the layers below need (trainers/models/contract.py, Config checks)
        at_least(self, 1, "vocab_size", "block_size", "n_layer", "n_head", "n_embd", "vocab_pad_multiple")
        fraction(self, "dropout")
        divisible(self, "n_embd", "n_head", "each head attends over n_embd / n_head channels")

    @property
    def padded_vocab(self) -> int:
        """Rows of the embedding and the head: vocab_size rounded up to a multiple of vocab_pad_multiple."""
        return -(-self.vocab_size // self.vocab_pad_multiple) * self.vocab_pad_multiple


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        assert cfg.n_embd % cfg.n_head == 0, "n_embd must be divisible by n_head"
        self.c_attn = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=cfg.bias)  # q, k, v in one matmul
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.resid_dropout = nn.Dropout(cfg.dropout)
        self.n_head, self.n_embd, self.dropout = cfg.n_head, cfg.n_embd, cfg.dropout

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        # (B, T, C) -> (B, nh, T, hs)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0,
                                           is_causal=True)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # re-assemble heads side by side
        return self.resid_dropout(self.c_proj(y))

    def attention_map(self, x):
        """x (B, T, C) -> the weights softmax(QK^T / sqrt(d)) (B, nh, T, T) that SDPA applies above (which
        never builds them), for the internals view."""
        B, T, C = x.shape
        q, k, _ = self.c_attn(x).split(self.n_embd, dim=2)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        return causal_attention(q, k)


class MLP(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        self.c_fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd, bias=cfg.bias)
        self.gelu = GELUTanh() if cfg.kernels == "triton" else nn.GELU(approximate="tanh")
        self.c_proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        fused = cfg.kernels == "triton"
        self.ln_1 = LayerNorm(cfg.n_embd, bias=cfg.bias, fused=fused)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = LayerNorm(cfg.n_embd, bias=cfg.bias, fused=fused)
        self.mlp = MLP(cfg)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        x = x + self.mlp(self.ln_2(x))
        return x


class Model(LanguageModelBase):
    def __init__(self, cfg: Config):
        super().__init__()
        self.config = cfg
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(cfg.padded_vocab, cfg.n_embd),
            wpe=nn.Embedding(cfg.block_size, cfg.n_embd),
            drop=nn.Dropout(cfg.dropout),
            h=nn.ModuleList([Block(cfg) for _ in range(cfg.n_layer)]),
            ln_f=LayerNorm(cfg.n_embd, bias=cfg.bias, fused=cfg.kernels == "triton"),
        ))
        self.lm_head = nn.Linear(cfg.n_embd, cfg.padded_vocab, bias=False)
        self.transformer.wte.weight = self.lm_head.weight  # weight tying
        self.apply(self._init_weights)
        # GPT-2 scaled init of the residual projections: std 0.02 / sqrt(2 * n_layer)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                torch.nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    def _init_weights(self, module):
        if isinstance(module, nn.Linear):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def hidden(self, idx):
        """Final hidden states (B, T, n_embd) after ln_f."""
        B, T = idx.shape
        assert T <= self.config.block_size, f"sequence of {T} tokens exceeds block_size {self.config.block_size}"
        pos = torch.arange(0, T, dtype=torch.long, device=idx.device)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))
        x = through_blocks(self.transformer.h, x, checkpointed=self.config.activation_checkpointing and self.training)
        return self.transformer.ln_f(x)

    def forward(self, idx, targets=None):
        """idx (B, T) token ids -> logits (B, T, vocab); loss is mean cross-entropy, negative targets ignored."""
        x = self.hidden(idx)
        return head_and_loss(x, self.lm_head, targets, fused=self.config.kernels == "triton",
                             vocab=self.config.vocab_size)

    @torch.no_grad()
    def internals(self, idx, decode):
        """On a probe idx (1, T): every layer's attention maps per head, and the logit lens (each layer's
        residual stream read out through ln_f and the head) at the last positions (trainers/internals.py)."""
        pos = torch.arange(idx.size(1), device=idx.device)
        x = self.transformer.wte(idx) + self.transformer.wpe(pos)
        maps, residuals = [], []
        for block in self.transformer.h:
            maps.append(block.attn.attention_map(block.ln_1(x)))
            x = block(x)
            residuals.append(x)
        return [attention_arrays(maps),
                logit_lens(residuals, lambda h: self.lm_head(self.transformer.ln_f(h)), decode,
                           vocab=self.config.vocab_size)]
