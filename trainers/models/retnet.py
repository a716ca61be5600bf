"""RetNet: a retentive network language model (Sun et al. 2023, "Retentive Network: A Successor to
Transformer for Large Language Models"), written for cockpit in plain PyTorch.

    x_0    = wte[idx]                                           (positions enter through the rotation of q, k)
    Y_l    = MSR(LN(X_l)) + X_l;     X_l+1 = FFN(LN(Y_l)) + Y_l
    logits = LN(X_L) @ wte^T                                    (weight tying)

Retention for one head with decay γ (section 2.1), Q = (X W_Q) ⊙ Θ, K = (X W_K) ⊙ Θ̄ (xPos-style rotation):
    parallel   (eq. 5):  Retention(X) = (Q Kᵀ ⊙ D) V,   D_nm = γ^(n-m) if n >= m else 0
    recurrent  (eq. 6):  S_n = γ S_n-1 + K_nᵀ V_n;   Retention(X_n) = Q_n S_n
    chunkwise  (eq. 7):  R_i = K_[i]ᵀ (V_[i] ⊙ ζ) + γ^B R_i-1,  ζ_j = γ^(B-j-1)
                         Retention(X_[i]) = (Q_[i] K_[i]ᵀ ⊙ D) V_[i] + (Q_[i] R_i-1) ⊙ ξ,  ξ_j = γ^(j+1)
Multi-scale retention (eq. 8): head h has γ_h = 1 - 2^(-5-h); each head is normalised by GroupNorm, then
    MSR(X) = (swish(X W_G) ⊙ GroupNorm(head_1, ..., head_H)) W_O
Training uses the chunkwise form (linear in T); generation uses the recurrent form (O(1) per token).

The three forms live in kernels/retention.py, in PyTorch and as the fused chunkwise kernel
(`retention_parallel`, `retention_recurrent`, `retention_chunkwise`; q, k (B, H, T, dk) already rotated and
scaled, v (B, H, T, dv), gamma (H,)). The PyTorch forms run in fp32 (decays and long sums are precision-
sensitive). The fused kernel, under bf16 autocast (the GPU runs), takes q, k, v in bf16 and accumulates every
product in fp32 with its state in fp32, as flash-linear-attention's retention does: the tensor cores run at
their bf16 rate instead of IEEE fp32 products; without autocast (CPU runs) it gets fp32.
With kernels="triton" the rotary positions are the fused rope kernel too (kernels/rope.py, interleaved pairs).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from kernels import integrate
from kernels.integrate import LayerNorm, fp32, kernel_dtype
from kernels.retention import retention_chunkwise, retention_parallel, retention_recurrent
from kernels.rope import rope_pairs
from trainers.internals import array, fitted_maps
from trainers.models.contract import (
    RecurrentLanguageModelBase,
    at_least,
    divisible,
    fraction,
    head_and_loss,
    through_blocks,
)


@dataclass
class Config:
    vocab_size: int = 65
    block_size: int = 256          # training context; generation is not limited by it
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    value_factor: int = 2          # d_v = value_factor * n_embd (the paper's 2d)
    ffn_mult: int = 2              # FFN hidden = ffn_mult * n_embd (2d keeps the block at 12 d² like a GPT)
    chunk_size: int = 64           # chunk length of the training form
    dropout: float = 0.0
    bias: bool = False
    activation_checkpointing: bool = False
    kernels: str = "torch"         # torch | triton (fused chunkwise retention, LayerNorm, linear+cross-entropy)

    def __post_init__(self):  # what the layers below need (trainers/models/contract.py, Config checks)
        at_least(self, 1, "vocab_size", "block_size", "n_layer", "n_head", "n_embd", "value_factor", "ffn_mult",
                 "chunk_size")
        fraction(self, "dropout")
        divisible(self, "n_embd", "n_head", "rotary positions turn pairs of each head's channels", times=2)


# ----------------------------------------------------------------------------------------------------
# Model

class MultiScaleRetention(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        assert cfg.n_embd % cfg.n_head == 0 and cfg.n_embd // cfg.n_head % 2 == 0, \
            "n_embd / n_head must be an even integer (rotation pairs)"
        self.n_head, self.chunk = cfg.n_head, cfg.chunk_size
        self.fused = cfg.kernels == "triton"
        self.dk = cfg.n_embd // cfg.n_head
        self.dv = cfg.value_factor * cfg.n_embd // cfg.n_head
        self.q_proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.k_proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.v_proj = nn.Linear(cfg.n_embd, cfg.value_factor * cfg.n_embd, bias=cfg.bias)
        self.g_proj = nn.Linear(cfg.n_embd, cfg.value_factor * cfg.n_embd, bias=cfg.bias)
        self.out_proj = nn.Linear(cfg.value_factor * cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.group_norm = nn.GroupNorm(cfg.n_head, cfg.value_factor * cfg.n_embd, affine=False, eps=1e-6)
        # γ_h = 1 - 2^(-5-h): head 0 looks ~32 tokens back, later heads further
        self.register_buffer("gamma", 1 - 2.0 ** (-5.0 - torch.arange(cfg.n_head, dtype=torch.float32)),
                             persistent=False)

    def qkv(self, x, pos):
        """x (B, T, C) -> rotated q, scaled k (B, H, T, dk) and v (B, H, T, dv)."""
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_head, self.dk).transpose(1, 2)
        k = self.k_proj(x).view(B, T, self.n_head, self.dk).transpose(1, 2)
        v = self.v_proj(x).view(B, T, self.n_head, self.dv).transpose(1, 2)
        rot = integrate.rope_pairs if self.fused else rope_pairs
        return rot(q, pos), rot(k, pos) * self.dk ** -0.5, v  # xPos Θ, without its scale

    def output(self, x, y):
        """y (B, H, T, dv) -> per-head GroupNorm, swish gate, output projection."""
        B, H, T, dv = y.shape
        y = y.transpose(1, 2).reshape(B * T, H * dv)
        y = self.group_norm(y.float()).view(B, T, H * dv).to(x.dtype)
        return self.out_proj(F.silu(self.g_proj(x)) * y)

    def forward(self, x, form: str = "chunkwise"):
        pos = torch.arange(x.size(1), device=x.device)
        q, k, v = self.qkv(x, pos)
        dtype = kernel_dtype(x) if self.fused and form == "chunkwise" else torch.float32
        q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
        with fp32(x):  # decays and long sums in fp32, also under bf16 autocast (the kernel: its accumulators)
            if form == "parallel":
                y = retention_parallel(q, k, v, self.gamma)
            elif form == "recurrent":
                y, _ = retention_recurrent(q, k, v, self.gamma)
            elif self.fused:  # one Triton program per (batch, head) walks the chunks, state in registers
                y, _ = integrate.retention(q, k, v, self.gamma, chunk=self.chunk)
            else:
                y, _ = retention_chunkwise(q, k, v, self.gamma, self.chunk)
        return self.output(x, y)

    def retention_map(self, x):
        """x (B, T, C) -> each head's retention scores (Q K^T ⊙ D) (B, H, T, T) of the parallel form (eq. 5),
        D_nm = γ^(n-m) for n >= m, else 0: what each position takes from each earlier one, before the values."""
        T = x.size(1)
        q, k, _ = self.qkv(x, torch.arange(T, device=x.device))
        n = torch.arange(T, device=x.device, dtype=torch.float32)
        gap = n[:, None] - n[None, :]                                      # n - m
        D = torch.where(gap >= 0, self.gamma.view(-1, 1, 1) ** gap.clamp_min(0), 0.0)  # (H, T, T)
        return (q.float() @ k.float().transpose(-2, -1)) * D

    def step(self, x, state, n: int):
        """x (B, C) at position n with state (B, H, dk, dv)."""
        q, k, v = self.qkv(x.unsqueeze(1), torch.tensor([n], device=x.device))
        with fp32(x):
            y, state = retention_recurrent(q.float(), k.float(), v.float(), self.gamma, state)
        return self.output(x.unsqueeze(1), y).squeeze(1), state


class FFN(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        self.fc1 = nn.Linear(cfg.n_embd, cfg.ffn_mult * cfg.n_embd, bias=cfg.bias)
        self.fc2 = nn.Linear(cfg.ffn_mult * cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x):
        return self.drop(self.fc2(F.gelu(self.fc1(x))))


class Block(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        fused = cfg.kernels == "triton"
        self.ln_1 = LayerNorm(cfg.n_embd, bias=cfg.bias, fused=fused)
        self.msr = MultiScaleRetention(cfg)
        self.ln_2 = LayerNorm(cfg.n_embd, bias=cfg.bias, fused=fused)
        self.ffn = FFN(cfg)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x, form: str = "chunkwise"):
        x = x + self.drop(self.msr(self.ln_1(x), form))
        return x + self.ffn(self.ln_2(x))

    def step(self, x, state, n: int):
        y, state = self.msr.step(self.ln_1(x), state, n)
        x = x + y
        return x + self.ffn(self.ln_2(x)), state


class Model(RecurrentLanguageModelBase):
    def __init__(self, cfg: Config):
        super().__init__()
        self.config = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList([Block(cfg) for _ in range(cfg.n_layer)])
        self.ln_f = LayerNorm(cfg.n_embd, bias=cfg.bias, fused=cfg.kernels == "triton")
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # weight tying
        self.apply(self._init_weights)
        for name, p in self.named_parameters():  # GPT-2 scaled init of the residual projections
            if name.endswith(("out_proj.weight", "fc2.weight")):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    def _init_weights(self, module):
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(self, idx, targets=None, form: str = "chunkwise"):
        """idx (B, T) -> logits (B, T, vocab); `form` picks the retention form (all give the same result)."""
        x = self.drop(self.wte(idx))
        x = through_blocks(self.blocks, x, form, checkpointed=self.config.activation_checkpointing and self.training)
        x = self.ln_f(x)
        return head_and_loss(x, self.lm_head, targets, fused=self.config.kernels == "triton")

    @torch.no_grad()
    def internals(self, idx, decode):
        """On a probe idx (1, T): every layer's retention maps per head (`retention`, MultiScaleRetention.
        retention_map; signed scores, fading with distance at each head's own rate) and the heads' decays γ."""
        x = self.wte(idx)
        maps = []
        for block in self.blocks:
            maps.append(block.msr.retention_map(block.ln_1(x)))
            x = block(x)
        names = [f"layer {i}" for i in range(len(self.blocks))]
        return [array("retention", fitted_maps(torch.cat(maps)), ["layer", "head", "query", "key"], labels=names,
                      digits=4),
                array("gamma", self.blocks[0].msr.gamma, ["head"], labels=[f"head {h}" for h in
                                                                           range(self.config.n_head)])]

    # --- recurrent inference ------------------------------------------------------------------------
    def init_state(self, batch: int, device):
        """(position of the next token, per-layer retention states (B, H, dk, dv))."""
        msr = self.blocks[0].msr
        return 0, [torch.zeros(batch, msr.n_head, msr.dk, msr.dv, device=device) for _ in self.blocks]

    def step(self, token, state):
        """token (B,) -> logits (B, vocab) and the new state; O(1) in the context length."""
        n, layer_states = state
        x = self.wte(token)
        new_states = []
        for block, s in zip(self.blocks, layer_states):
            x, s = block.step(x, s, n)
            new_states.append(s)
        return self.lm_head(self.ln_f(x)), (n + 1, new_states)
