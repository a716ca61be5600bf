"""Speedrun GPT: nanoGPT's GPT (trainers/models/gpt.py) with what the GPT-2 speedrun (modded-nanogpt) found,
each change behind its own `model.*` switch, so that a learner can turn one on at a time and see what it buys.

With every switch off this is gpt.py's model, parameter for parameter (same names, same init, same loss on
the same weights: tests/test_speedrun.py). The switches, in the order the speedrun's records added them:

    rope          rotary position embeddings (Su et al. 2021, RoFormer) on q and k instead of the learned
                  position table wpe:  for each pair (x1, x2) of a head's channels at position t,
                  (x1, x2) -> (x1 cos(t w_i) + x2 sin(t w_i), -x1 sin(t w_i) + x2 cos(t w_i)),
                  w_i = base^(-2i/d). Attention then depends on relative position only.
    qk_norm       q and k RMS-normalised per head before the dot product (QK-norm, Dehghani et al. 2023):
                  the attention logits stay bounded however large the weights grow.
    relu2         the MLP's GELU replaced by ReLU(x)^2 (So et al. 2021, Primer).
    rmsnorm       parameter-free RMSNorm, x / sqrt(mean(x^2) + eps), instead of LayerNorm, and one more
                  after the token embedding (the record's norm(embed(x))).
    untied_head   the output head is its own matrix instead of the token embedding's transpose.
    zero_init     the residual projections (attention and MLP c_proj) and an untied head start at zero:
                  each block starts as the identity and the first logits are uniform.
    value_embeds  value embeddings (the record's "012 ... 012" pattern): n tables indexed by the input
                  token, mixed into the attention values of the first n and the last n layers,
                  v = l0 * v + l1 * ve[token] (the value-residual idea of Zhou et al. 2024).
    skips         U-net skip connections: the first half of the blocks ("encoder") keep their outputs, the
                  second half adds them back in reverse order with learned weights, and every block mixes
                  in the normalised embedding x0 (x = l0 * x + l1 * x0, l = (1, 0) at init).
    softcap       logits soft-capped, c * tanh(logits / c) (Gemma 2); 0 turns it off. The record's
                  30 * sigmoid(z / 7.5) is 15 * tanh(z / 15) + 15, the same cap of 15 shifted, and a
                  softmax does not see a constant shift.
    window        sliding-window attention: each token attends to the `window` tokens up to itself (0: all
                  of the context, plain causal attention).

Not here: the record's document-aware masking (its batches are 48k-token streams of documents cut at the
BOS token, attended with FlexAttention; the loop's batches are (batch, block_size) windows), its window that
grows from 128 to 1792 tokens over training, its FP8 head and its 0.12 attention scale. The optimizer and
schedule switches are training keys: train.optimizer=muon (trainers/optim.py) and train.schedule=wsd
(trainers/loop.py lr_at).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from kernels.integrate import GELUTanh, LayerNorm
from trainers.internals import attention_arrays, causal_attention, logit_lens
from trainers.models.contract import (
    LanguageModelBase,
    at_least,
    divisible,
    fraction,
    head_and_loss,
    require,
    through_blocks,
)


@dataclass
class Config:
    vocab_size: int = 65
    block_size: int = 256
    n_layer: int = 6
    n_head: int = 6
    n_embd: int = 384
    dropout: float = 0.0
    bias: bool = False
    vocab_pad_multiple: int = 1
    activation_checkpointing: bool = False
    kernels: str = "torch"      # torch | triton (fused LayerNorm / GELU, as gpt.py)
    # the speedrun's changes, each on its own (all False / 0: gpt.py's model)
    rope: bool = True
    rope_base: float = 10000.0
    qk_norm: bool = True
    relu2: bool = True
    rmsnorm: bool = True
    untied_head: bool = True
    zero_init: bool = True
    value_embeds: int = 3       # tables (the record: 3); 0: off
    skips: bool = True
    softcap: float = 15.0       # c in c * tanh(logits / c); 0: off
    window: int = 0             # sliding-window attention span in tokens; 0: full causal attention

    def __post_init__(self):
        at_least(self, 1, "vocab_size", "block_size", "n_layer", "n_head", "n_embd", "vocab_pad_multiple")
        at_least(self, 0, "value_embeds", "softcap", "window")
        fraction(self, "dropout")
        divisible(self, "n_embd", "n_head", "each head attends over n_embd / n_head channels")
        if self.rope:
            require((self.n_embd // self.n_head) % 2 == 0, self, "n_embd",
                    f"gives heads of {self.n_embd // self.n_head} channels; rotary embeddings rotate channel "
                    "pairs: make n_embd / n_head even, or model.rope=false")
        require(2 * self.value_embeds <= self.n_layer, self, "value_embeds",
                f"needs 2 x value_embeds <= n_layer={self.n_layer} (the first and the last value_embeds layers "
                f"each take one); use model.value_embeds={self.n_layer // 2}")

    @property
    def padded_vocab(self) -> int:
        return -(-self.vocab_size // self.vocab_pad_multiple) * self.vocab_pad_multiple


class RMSNorm(nn.Module):
    """x / sqrt(mean(x^2) + eps) over the last dimension, without a learned gain (the record's norm)."""

    def forward(self, x):
        return F.rms_norm(x, (x.size(-1),))


def make_norm(cfg: Config) -> nn.Module:
    return RMSNorm() if cfg.rmsnorm else LayerNorm(cfg.n_embd, bias=cfg.bias, fused=cfg.kernels == "triton")


class Rotary(nn.Module):
    """RoPE (Su et al. 2021): channel i of the first half and channel i of the second half of a head form a
    pair rotated by the angle t * w_i, w_i = base^(-2i/d), at position t."""

    def __init__(self, head_dim: int, block_size: int, base: float):
        super().__init__()
        w = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)  # (hs/2,)
        angle = torch.outer(torch.arange(block_size, dtype=torch.float32), w)        # (T, hs/2)
        self.register_buffer("cos", angle.cos(), persistent=False)
        self.register_buffer("sin", angle.sin(), persistent=False)

    def forward(self, x):  # x (B, nh, T, hs)
        T = x.size(2)
        cos, sin = self.cos[:T].to(x.dtype), self.sin[:T].to(x.dtype)
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat((x1 * cos + x2 * sin, -x1 * sin + x2 * cos), dim=-1)


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: Config, value_embed: bool):
        super().__init__()
        hs = cfg.n_embd // cfg.n_head
        self.c_attn = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=cfg.bias)  # q, k, v in one matmul
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.resid_dropout = nn.Dropout(cfg.dropout)
        if cfg.rope:
            self.rotary = Rotary(hs, cfg.block_size, cfg.rope_base)
        if cfg.qk_norm:
            self.q_norm, self.k_norm = RMSNorm(), RMSNorm()
        if value_embed:  # v = l0 * v + l1 * ve
            self.value_lambdas = nn.Parameter(torch.tensor([0.5, 0.5]))
        self.n_head, self.n_embd, self.dropout, self.window = cfg.n_head, cfg.n_embd, cfg.dropout, cfg.window

    def qkv(self, x):
        """x (B, T, C) -> q, k, v (B, nh, T, hs), q and k normalised (qk_norm) and rotated (rope)."""
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        # (B, T, C) -> (B, nh, T, hs)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        if hasattr(self, "q_norm"):
            q, k = self.q_norm(q), self.k_norm(k)
        if hasattr(self, "rotary"):
            q, k = self.rotary(q), self.rotary(k)
        return q, k, v

    def window_mask(self, T: int, device) -> torch.Tensor | None:
        """(T, T) bool of the keys each query may read (None: plain causal)."""
        if not 0 < self.window < T:
            return None
        t = torch.arange(T, device=device)  # query t sees keys t - window < s <= t
        return (t[None, :] <= t[:, None]) & (t[:, None] - t[None, :] < self.window)

    def attention_map(self, x):
        """The weights (B, nh, T, T) SDPA applies in forward (which never builds them), for the internals view."""
        q, k, _ = self.qkv(x)
        mask = self.window_mask(x.size(1), x.device)
        if mask is None:
            return causal_attention(q, k)
        att = (q.float() @ k.float().transpose(-2, -1)) / math.sqrt(k.size(-1))
        return F.softmax(att.masked_fill(~mask, float("-inf")), dim=-1)

    def forward(self, x, ve=None):
        B, T, C = x.shape
        q, k, v = self.qkv(x)
        if ve is not None:
            v = self.value_lambdas[0] * v + self.value_lambdas[1] * ve.view(B, T, self.n_head, -1).transpose(1, 2)
        mask = self.window_mask(T, x.device)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None,
                                           dropout_p=self.dropout if self.training else 0.0)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # re-assemble heads side by side
        return self.resid_dropout(self.c_proj(y))


class ReLUSquared(nn.Module):
    """ReLU(x)^2 (Primer, So et al. 2021)."""

    def forward(self, x):
        return F.relu(x).square()


class MLP(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        self.c_fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd, bias=cfg.bias)
        if cfg.relu2:
            self.act = ReLUSquared()
        else:
            self.act = GELUTanh() if cfg.kernels == "triton" else nn.GELU(approximate="tanh")
        self.c_proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(self.act(self.c_fc(x))))


class Block(nn.Module):
    def __init__(self, cfg: Config, value_embed: bool = False):
        super().__init__()
        self.ln_1 = make_norm(cfg)
        self.attn = CausalSelfAttention(cfg, value_embed)
        self.ln_2 = make_norm(cfg)
        self.mlp = MLP(cfg)
        if cfg.skips:  # x = l0 * x + l1 * x0: the embedding's shortcut into every block
            self.x0_lambdas = nn.Parameter(torch.tensor([1.0, 0.0]))

    def mixed(self, x, x0=None):
        """The block's input with the embedding's shortcut mixed in (skips), or x."""
        return x if x0 is None else self.x0_lambdas[0] * x + self.x0_lambdas[1] * x0

    def forward(self, x, x0=None, ve=None):
        x = self.mixed(x, x0)
        x = x + self.attn(self.ln_1(x), ve)
        x = x + self.mlp(self.ln_2(x))
        return x


class SoftCappedLinear(nn.Linear):
    """The head with its logits soft-capped: c * tanh((x W^T) / c), in (-c, c) (Gemma 2)."""

    def __init__(self, in_features: int, out_features: int, cap: float):
        super().__init__(in_features, out_features, bias=False)
        self.cap = cap

    def forward(self, x):
        return self.cap * torch.tanh(super().forward(x) / self.cap)


class Model(LanguageModelBase):
    def __init__(self, cfg: Config):
        super().__init__()
        self.config = cfg
        L, n_ve = cfg.n_layer, cfg.value_embeds
        ve_layers = set(range(n_ve)) | set(range(L - n_ve, L))
        parts = dict(wte=nn.Embedding(cfg.padded_vocab, cfg.n_embd))
        if not cfg.rope:
            parts["wpe"] = nn.Embedding(cfg.block_size, cfg.n_embd)
        if cfg.rmsnorm:
            parts["ln_0"] = RMSNorm()  # norm(embed(x)), as the record
        parts.update(drop=nn.Dropout(cfg.dropout),
                     h=nn.ModuleList([Block(cfg, value_embed=i in ve_layers) for i in range(L)]),
                     ln_f=make_norm(cfg))
        self.transformer = nn.ModuleDict(parts)
        if n_ve:
            self.value_embeds = nn.ModuleList([nn.Embedding(cfg.padded_vocab, cfg.n_embd) for _ in range(n_ve)])
        if cfg.skips:  # decoder block i adds encoder block (n_enc - 1 - i)'s output, times skip_weights[i]
            self.skip_weights = nn.Parameter(torch.ones(L - L // 2))
        if cfg.softcap > 0:
            self.lm_head = SoftCappedLinear(cfg.n_embd, cfg.padded_vocab, cfg.softcap)
        else:
            self.lm_head = nn.Linear(cfg.n_embd, cfg.padded_vocab, bias=False)
        if not cfg.untied_head:
            self.transformer.wte.weight = self.lm_head.weight  # weight tying
        self.apply(self._init_weights)
        # GPT-2 scaled init of the residual projections: std 0.02 / sqrt(2 * n_layer); zero_init: 0
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                if cfg.zero_init:
                    torch.nn.init.zeros_(p)
                else:
                    torch.nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))
        if cfg.zero_init and cfg.untied_head:
            torch.nn.init.zeros_(self.lm_head.weight)

    def _init_weights(self, module):
        if isinstance(module, nn.Linear):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def hidden(self, idx, trace: list | None = None):
        """Final hidden states (B, T, n_embd) after ln_f. `trace` (the internals probe): gets (attention map,
        output) of each block in turn."""
        T = idx.size(1)
        cfg = self.config
        assert T <= cfg.block_size, f"sequence of {T} tokens exceeds block_size {cfg.block_size}"
        tr = self.transformer
        x = tr.wte(idx)  # (B, T, C)
        if "wpe" in tr:
            x = x + tr.wpe(torch.arange(0, T, dtype=torch.long, device=idx.device))
        if "ln_0" in tr:
            x = tr.ln_0(x)
        x = tr.drop(x)
        blocks, L = tr.h, cfg.n_layer
        if trace is None and not cfg.skips and not cfg.value_embeds:  # gpt.py's forward
            x = through_blocks(blocks, x, checkpointed=cfg.activation_checkpointing and self.training)
            return tr.ln_f(x)
        ve = [None] * L
        if cfg.value_embeds:  # tables 0..n-1 on the first n layers, and again on the last n
            tables = [emb(idx) for emb in self.value_embeds]  # each (B, T, C), split into heads in attention
            n = len(tables)
            ve[:n], ve[L - n:] = tables, tables
        x0 = x if cfg.skips else None
        n_enc = L // 2  # with skips: blocks [0, n_enc) are the encoder, the rest the decoder
        kept = []
        for i, block in enumerate(blocks):
            if cfg.skips and i >= n_enc and kept:  # U-net: the decoder takes the encoder's outputs in reverse
                x = x + self.skip_weights[i - n_enc] * kept.pop()
            seen = None if trace is None else block.attn.attention_map(block.ln_1(block.mixed(x, x0)))
            x = through_blocks([block], x, x0, ve[i],
                               checkpointed=cfg.activation_checkpointing and self.training)
            if trace is not None:
                trace.append((seen, x))
            if cfg.skips and i < n_enc:
                kept.append(x)
        return tr.ln_f(x)

    def internals(self, idx, decode):
        """On a probe idx (1, T): every layer's attention maps per head (what each block's attention reads, skips
        and value embeddings included), and the logit lens through ln_f and the (soft-capped) head
        (trainers/internals.py)."""
        trace: list = []
        self.hidden(idx, trace)
        return [attention_arrays([m for m, _ in trace]),
                logit_lens([x for _, x in trace], lambda h: self.lm_head(self.transformer.ln_f(h)), decode,
                           vocab=self.config.vocab_size)]

    def forward(self, idx, targets=None):
        """idx (B, T) token ids -> logits (B, T, vocab); loss is mean cross-entropy, targets -1 ignored."""
        x = self.hidden(idx)
        fused = self.config.kernels == "triton" and self.config.softcap == 0  # the fused kernel has no cap
        return head_and_loss(x, self.lm_head, targets, fused=fused, vocab=self.config.vocab_size)
