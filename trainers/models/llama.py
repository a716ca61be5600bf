"""Llama: the decoder-only transformer of LLaMA (Touvron et al. 2023) and of the open models built like it
(Llama 2/3, Mistral, Qwen2, Qwen3), written for cockpit in the manner of nanoGPT's model.py.

    x_0    = wte[idx]                                         (no position embedding: positions live in RoPE)
    x_l+1  = x_l + Attn(RMSNorm(x_l));  x_l+1 = x_l+1 + SwiGLU(RMSNorm(x_l+1))       (pre-norm residual blocks)
    logits = RMSNorm(x_L) @ W_head^T                          (W_head = wte when tie_embeddings, else its own)

RMSNorm (Zhang & Sennrich 2019):  y = x / sqrt(mean(x^2) + eps) * g          (no mean, no bias)
SwiGLU (Shazeer 2020):            y = W_down (silu(W_gate x) * W_up x)
RoPE (Su et al. 2021), rotate-half layout: for head channel pair (i, i + D/2) and position t,
    theta_i = rope_theta^(-2i/D);  (a, b) -> (a cos t theta_i - b sin t theta_i, b cos t theta_i + a sin t theta_i)
  Llama 3's frequency scaling (rope_scaling=llama3) stretches the long wavelengths for a longer context: with
  wavelength w_i = 2 pi / theta_i and L the original context, w_i > L / low_freq_factor is divided by `factor`,
  w_i < L / high_freq_factor is kept, and the band between blends the two, s = (L / w_i - low) / (high - low):
  theta_i' = (1 - s) theta_i / factor + s theta_i.
Grouped-query attention (Ainslie et al. 2023): n_kv_head key/value heads, each shared by n_head / n_kv_head
query heads (n_kv_head = n_head is multi-head attention, 1 is multi-query), causal, softmax(QK^T / sqrt(D)) V
through torch's SDPA. The family options:
    qk_norm         RMSNorm over each head's query and key before RoPE (Qwen3)
    qkv_bias        biases on the q, k, v projections (Qwen2); out_bias on the output projection (Llama's
                    attention_bias sets both)
    sliding_window  each token attends to itself and the sliding_window - 1 tokens before it (Mistral); an
                    explicit mask where the sequence is longer than the window, plain causal attention otherwise

Module names follow the Hugging Face ones inside a block (q_proj ... down_proj), so that LoRA roles and
checkpoints (trainers/hf.py) map one to one.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from kernels import integrate
from kernels.integrate import RMSNorm
from trainers.internals import attention_arrays, causal_attention, logit_lens
from trainers.models.contract import (
    LanguageModelBase,
    at_least,
    divisible,
    fraction,
    head_and_loss,
    one_of,
    require,
    through_blocks,
)

SWIGLU_MULTIPLE = 256  # LLaMA's `multiple_of`: the SwiGLU width is rounded up to it
ROPE_SCALINGS = ("none", "llama3")


@dataclass
class Config:
    vocab_size: int = 65
    block_size: int = 256             # the longest sequence (max_position_embeddings)
    n_layer: int = 6
    n_head: int = 6
    n_kv_head: int = 0                # key/value heads; 0 -> n_head (no grouping)
    n_embd: int = 384
    head_dim: int = 0                 # 0 -> n_embd / n_head (Qwen3 and Mistral Nemo set their own)
    n_hidden: int = 0                 # SwiGLU width; 0 -> 2/3 * 4 * n_embd rounded up to SWIGLU_MULTIPLE (LLaMA)
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: str = "none"        # none | llama3 (the four rope_* keys below)
    rope_factor: float = 8.0
    rope_low_freq_factor: float = 1.0
    rope_high_freq_factor: float = 4.0
    rope_original_context: int = 8192
    qk_norm: bool = False             # Qwen3
    qkv_bias: bool = False            # Qwen2
    out_bias: bool = False
    tie_embeddings: bool = True
    sliding_window: int = 0           # 0: full causal attention; Mistral: 4096
    dropout: float = 0.0
    activation_checkpointing: bool = False
    kernels: str = "torch"            # torch | triton (fused RMSNorm, RoPE, SwiGLU, linear+cross-entropy)

    def __post_init__(self):  # what the layers below need (trainers/models/contract.py, Config checks)
        at_least(self, 1, "vocab_size", "block_size", "n_layer", "n_head", "n_embd", "rope_original_context")
        at_least(self, 0, "n_kv_head", "head_dim", "n_hidden", "sliding_window")
        fraction(self, "dropout")
        require(self.rms_norm_eps > 0, self, "rms_norm_eps", "must be positive, e.g. 1e-5")
        require(self.rope_theta > 0, self, "rope_theta", "must be positive, e.g. 10000 (Llama 3: 500000)")
        one_of(self, "rope_scaling", ROPE_SCALINGS)
        if self.rope_scaling == "llama3":
            require(self.rope_factor >= 1, self, "rope_factor", "must be at least 1 (Llama 3.1: 8)")
            require(self.rope_high_freq_factor > self.rope_low_freq_factor, self, "rope_high_freq_factor",
                    f"must exceed model.rope_low_freq_factor={self.rope_low_freq_factor} (Llama 3.1: 4 and 1)")
        if not self.head_dim:
            divisible(self, "n_embd", "n_head", "each head attends over n_embd / n_head channels")
        require(self.dim % 2 == 0, self, "head_dim" if self.head_dim else "n_embd",
                f"gives heads of {self.dim} channels; RoPE turns pairs of channels, so it must be even")
        divisible(self, "n_head", "n_kv_head", "each key/value head serves a group of query heads")

    @property
    def kv_heads(self) -> int:
        return self.n_kv_head or self.n_head

    @property
    def dim(self) -> int:
        """Channels per head."""
        return self.head_dim or self.n_embd // self.n_head

    @property
    def hidden(self) -> int:
        if self.n_hidden:
            return self.n_hidden
        return SWIGLU_MULTIPLE * math.ceil(2 * 4 * self.n_embd / 3 / SWIGLU_MULTIPLE)


def rope_frequencies(cfg: Config, device=None) -> torch.Tensor:
    """theta_i (D/2,) fp32, with Llama 3's scaling when the config asks for it (see the module docstring)."""
    D = cfg.dim
    theta = 1.0 / (cfg.rope_theta ** (torch.arange(0, D, 2, device=device, dtype=torch.int64).float() / D))
    if cfg.rope_scaling != "llama3":
        return theta
    L, low, high, factor = (cfg.rope_original_context, cfg.rope_low_freq_factor, cfg.rope_high_freq_factor,
                            cfg.rope_factor)
    wavelen = 2 * math.pi / theta
    scaled = torch.where(wavelen > L / low, theta / factor, theta)        # long wavelengths: stretched
    s = (L / wavelen - low) / (high - low)
    blended = (1 - s) * scaled / factor + s * scaled
    between = (wavelen >= L / high) & (wavelen <= L / low)
    return torch.where(between, blended, scaled)


def rope_cos_sin(cfg: Config, T: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin (T, D/2) of t * theta_i for t = 0 .. T-1 (computed per forward: a few kFLOPs, no buffer to
    keep in step with the device or a checkpoint)."""
    angles = torch.arange(T, device=device, dtype=torch.float32)[:, None] * rope_frequencies(cfg, device)[None, :]
    return angles.cos(), angles.sin()


def window_mask(T: int, window: int, device) -> torch.Tensor:
    """(T, T) bool, True where query i may attend key j: j <= i and i - j < window."""
    i = torch.arange(T, device=device)[:, None]
    j = torch.arange(T, device=device)[None, :]
    return (j <= i) & (i - j < window)


class Attention(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        D = cfg.dim
        self.q_proj = nn.Linear(cfg.n_embd, cfg.n_head * D, bias=cfg.qkv_bias)
        self.k_proj = nn.Linear(cfg.n_embd, cfg.kv_heads * D, bias=cfg.qkv_bias)
        self.v_proj = nn.Linear(cfg.n_embd, cfg.kv_heads * D, bias=cfg.qkv_bias)
        self.o_proj = nn.Linear(cfg.n_head * D, cfg.n_embd, bias=cfg.out_bias)
        fused = cfg.kernels == "triton"
        self.q_norm = RMSNorm(D, eps=cfg.rms_norm_eps, fused=fused) if cfg.qk_norm else None
        self.k_norm = RMSNorm(D, eps=cfg.rms_norm_eps, fused=fused) if cfg.qk_norm else None
        self.rope = integrate.rope if fused else rope_reference
        self.n_head, self.n_kv_head, self.head_dim = cfg.n_head, cfg.kv_heads, D
        self.window, self.dropout = cfg.sliding_window, cfg.dropout

    def qkv(self, x, cos, sin):
        """x (B, T, C) -> q (B, nh, T, D), k and v (B, nkv, T, D): projected, normalised (Qwen3), rotated."""
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_head, self.head_dim)       # (B, T, nh, D)
        k = self.k_proj(x).view(B, T, self.n_kv_head, self.head_dim)    # (B, T, nkv, D)
        v = self.v_proj(x).view(B, T, self.n_kv_head, self.head_dim)
        if self.q_norm is not None:  # Qwen3: each head's q and k normalised before they are rotated
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = self.rope(q, cos, sin), self.rope(k, cos, sin)
        return q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, heads, T, D)

    def attention_map(self, x, cos, sin):
        """The weights (B, nh, T, T) SDPA applies in forward (which never builds them), for the internals view:
        softmax(Q Kᵀ / sqrt(D)) under the causal (or sliding-window) mask, each query head reading its group's
        key head."""
        q, k, _ = self.qkv(x, cos, sin)
        k = k.repeat_interleave(self.n_head // self.n_kv_head, dim=1)   # GQA: a key head per query head
        T = x.size(1)
        if not (self.window and T > self.window):
            return causal_attention(q, k)
        att = (q.float() @ k.float().transpose(-2, -1)) / math.sqrt(self.head_dim)
        return F.softmax(att.masked_fill(~window_mask(T, self.window, x.device), float("-inf")), dim=-1)

    def forward(self, x, cos, sin):
        B, T, _ = x.shape
        q, k, v = self.qkv(x, cos, sin)
        dropout = self.dropout if self.training else 0.0
        grouped = self.n_kv_head != self.n_head
        if self.window and T > self.window:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=window_mask(T, self.window, x.device),
                                               dropout_p=dropout, enable_gqa=grouped)
        else:
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=True, enable_gqa=grouped)
        y = y.transpose(1, 2).reshape(B, T, self.n_head * self.head_dim)  # re-assemble heads side by side
        return self.o_proj(y)


def rope_reference(x, cos, sin):
    """x (B, T, H, D) rotated in the rotate-half layout by cos, sin (T, D/2) (kernels/rope.py, unfused)."""
    x1, x2 = x.chunk(2, dim=-1)
    c, s = cos[:, None, :].to(x.dtype), sin[:, None, :].to(x.dtype)
    return torch.cat([x1 * c - x2 * s, x2 * c + x1 * s], dim=-1)


class SwiGLU(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.n_embd, cfg.hidden, bias=False)
        self.up_proj = nn.Linear(cfg.n_embd, cfg.hidden, bias=False)
        self.down_proj = nn.Linear(cfg.hidden, cfg.n_embd, bias=False)
        self.fused = cfg.kernels == "triton"

    def forward(self, x):
        gate, up = self.gate_proj(x), self.up_proj(x)                  # (B, T, hidden) each
        return self.down_proj(integrate.swiglu(gate, up) if self.fused else F.silu(gate) * up)


class Block(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        fused = cfg.kernels == "triton"
        self.ln_1 = RMSNorm(cfg.n_embd, eps=cfg.rms_norm_eps, fused=fused)
        self.attn = Attention(cfg)
        self.ln_2 = RMSNorm(cfg.n_embd, eps=cfg.rms_norm_eps, fused=fused)
        self.mlp = SwiGLU(cfg)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x, cos, sin):
        x = x + self.drop(self.attn(self.ln_1(x), cos, sin))
        return x + self.drop(self.mlp(self.ln_2(x)))


class Model(LanguageModelBase):
    def __init__(self, cfg: Config):
        super().__init__()
        self.config = cfg
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(cfg.vocab_size, cfg.n_embd),
            drop=nn.Dropout(cfg.dropout),
            h=nn.ModuleList([Block(cfg) for _ in range(cfg.n_layer)]),
            ln_f=RMSNorm(cfg.n_embd, eps=cfg.rms_norm_eps, fused=cfg.kernels == "triton"),
        ))
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.transformer.wte.weight
        for name, module in self.named_modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                # GPT-2's init, with the residual projections scaled by 1 / sqrt(2 * n_layer)
                residual = name.endswith(("o_proj", "down_proj"))
                std = 0.02 / math.sqrt(2 * cfg.n_layer) if residual else 0.02
                nn.init.normal_(module.weight, mean=0.0, std=std)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)

    def hidden(self, idx):
        """Final hidden states (B, T, n_embd) after ln_f."""
        T = idx.size(1)
        assert T <= self.config.block_size, f"sequence of {T} tokens exceeds block_size {self.config.block_size}"
        cos, sin = rope_cos_sin(self.config, T, idx.device)             # (T, D/2) each
        x = self.transformer.drop(self.transformer.wte(idx))
        x = through_blocks(self.transformer.h, x, cos, sin,
                           checkpointed=self.config.activation_checkpointing and self.training)
        return self.transformer.ln_f(x)

    def internals(self, idx, decode):
        """On a probe idx (1, T): every layer's attention maps per head, and the logit lens (each layer's
        residual stream read out through the final RMSNorm and the head) at the last positions
        (trainers/internals.py)."""
        cos, sin = rope_cos_sin(self.config, idx.size(1), idx.device)
        x = self.transformer.wte(idx)
        maps, residuals = [], []
        for block in self.transformer.h:
            maps.append(block.attn.attention_map(block.ln_1(x), cos, sin))
            x = block(x, cos, sin)
            residuals.append(x)
        return [attention_arrays(maps),
                logit_lens(residuals, lambda h: self.lm_head(self.transformer.ln_f(h)), decode,
                           vocab=self.config.vocab_size)]

    def forward(self, idx, targets=None):
        """idx (B, T) token ids -> logits (B, T, vocab); loss is mean cross-entropy, negative targets (-100 on prompts) ignored."""
        return head_and_loss(self.hidden(idx), self.lm_head, targets, fused=self.config.kernels == "triton")
