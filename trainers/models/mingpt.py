"""minGPT: Karpathy's minimal GPT (2020), written for cockpit the way minGPT's model.py reads.

Differences from trainers/models/gpt.py, kept on purpose so the two can be compared: separate embedding /
attention / residual dropouts, GELU in its tanh form spelled out (NewGELU, Hendrycks & Gimpel 2016), a
causal mask buffer with explicit softmax attention, biases everywhere, and an untied output head.

    att = softmax(Q K^T / sqrt(d_head) + causal mask) ;  y = att V          (Vaswani et al. 2017, eq. 1)

With kernels="triton" the masked softmax is the fused causal-softmax kernel (kernels/softmax.py), which
computes the mask from indices instead of reading the (T, T) buffer.

Weight decay as minGPT's `configure_optimizers`: the weights of Linear layers only; biases, LayerNorm and
Embedding weights are never decayed (the embeddings are marked `_no_weight_decay`, which trainers/tasks
param_groups honours; nanoGPT's GPT, by contrast, decays every matrix including its embeddings).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from kernels import integrate
from trainers.internals import attention_arrays, causal_attention, logit_lens
from trainers.models.contract import IGNORE, LanguageModelBase, at_least, divisible, fraction, ignored, sample_next


@dataclass
class Config:
    vocab_size: int = 3
    block_size: int = 11
    n_layer: int = 3          # gpt-nano: 3 layers, 3 heads, 48 wide
    n_head: int = 3
    n_embd: int = 48
    embd_pdrop: float = 0.1
    resid_pdrop: float = 0.1
    attn_pdrop: float = 0.1
    kernels: str = "torch"    # torch | triton (the fused causal softmax of the attention)

    def __post_init__(self):  # what the layers below need (trainers/models/contract.py, Config checks)
        at_least(self, 1, "vocab_size", "block_size", "n_layer", "n_head", "n_embd")
        fraction(self, "embd_pdrop", "resid_pdrop", "attn_pdrop")
        divisible(self, "n_embd", "n_head", "each head attends over n_embd / n_head channels")


class NewGELU(nn.Module):
    """GELU(x) = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))"""

    def forward(self, x):
        return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        assert cfg.n_embd % cfg.n_head == 0
        self.c_attn = nn.Linear(cfg.n_embd, 3 * cfg.n_embd)
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd)
        self.attn_dropout = nn.Dropout(cfg.attn_pdrop)
        self.resid_dropout = nn.Dropout(cfg.resid_pdrop)
        self.register_buffer("bias", torch.tril(torch.ones(cfg.block_size, cfg.block_size))
                             .view(1, 1, cfg.block_size, cfg.block_size), persistent=False)
        self.n_head, self.n_embd = cfg.n_head, cfg.n_embd
        self.fused = cfg.kernels == "triton"

    def forward(self, x):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))  # (B, nh, T, T)
        if self.fused:  # mask and softmax in one kernel; keys after the query get exactly 0
            att = integrate.causal_softmax(att)
        else:
            att = F.softmax(att.masked_fill(self.bias[:, :, :T, :T] == 0, float("-inf")), dim=-1)
        att = self.attn_dropout(att)
        y = (att @ v).transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))

    def attention_map(self, x):
        """x (B, T, C) -> the attention weights `att` above, before dropout (B, nh, T, T): the internals view."""
        B, T, C = x.size()
        q, k, _ = self.c_attn(x).split(self.n_embd, dim=2)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        return causal_attention(q, k)


class Block(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.n_embd)
        self.mlp = nn.ModuleDict(dict(c_fc=nn.Linear(cfg.n_embd, 4 * cfg.n_embd), act=NewGELU(),
                                      c_proj=nn.Linear(4 * cfg.n_embd, cfg.n_embd),
                                      dropout=nn.Dropout(cfg.resid_pdrop)))

    def forward(self, x):
        m = self.mlp
        x = x + self.attn(self.ln_1(x))
        x = x + m.dropout(m.c_proj(m.act(m.c_fc(self.ln_2(x)))))
        return x


class Model(LanguageModelBase):
    def __init__(self, cfg: Config):
        super().__init__()
        self.config = cfg
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(cfg.vocab_size, cfg.n_embd),
            wpe=nn.Embedding(cfg.block_size, cfg.n_embd),
            drop=nn.Dropout(cfg.embd_pdrop),
            h=nn.ModuleList([Block(cfg) for _ in range(cfg.n_layer)]),
            ln_f=nn.LayerNorm(cfg.n_embd),
        ))
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        self.apply(self._init_weights)
        for pn, p in self.named_parameters():
            if pn.endswith("c_proj.weight"):
                torch.nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))
        for emb in (self.transformer.wte, self.transformer.wpe):  # minGPT's blacklist: no decay on Embedding
            emb.weight._no_weight_decay = True

    def _init_weights(self, module):
        if isinstance(module, nn.Linear):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)
        elif isinstance(module, nn.LayerNorm):
            torch.nn.init.zeros_(module.bias)
            torch.nn.init.ones_(module.weight)

    def forward(self, idx, targets=None):
        B, T = idx.size()
        assert T <= self.config.block_size, f"sequence of {T} exceeds block_size {self.config.block_size}"
        pos = torch.arange(0, T, dtype=torch.long, device=idx.device)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))
        for block in self.transformer.h:
            x = block(x)
        logits = self.lm_head(self.transformer.ln_f(x))
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), ignored(targets).view(-1), ignore_index=IGNORE)
        return logits, loss

    @torch.no_grad()
    def internals(self, idx, decode):
        """On a probe idx (1, T): every layer's attention maps per head (on the sort task, the heads that find
        each next digit), and the logit lens at the last positions (trainers/internals.py)."""
        pos = torch.arange(idx.size(1), device=idx.device)
        x = self.transformer.wte(idx) + self.transformer.wpe(pos)
        maps, residuals = [], []
        for block in self.transformer.h:
            maps.append(block.attn.attention_map(block.ln_1(x)))
            x = block(x)
            residuals.append(x)
        return [attention_arrays(maps),
                logit_lens(residuals, lambda h: self.lm_head(self.transformer.ln_f(h)), decode)]

    @torch.no_grad()
    def generate(self, idx, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
                 generator: torch.Generator | None = None, do_sample: bool = True):
        for _ in range(max_new_tokens):
            idx_cond = idx if idx.size(1) <= self.config.block_size else idx[:, -self.config.block_size:]
            logits, _ = self(idx_cond)
            if do_sample:
                idx_next = sample_next(logits[:, -1, :], temperature, top_k, generator)
            else:
                idx_next = logits[:, -1, :].argmax(dim=-1, keepdim=True)
            idx = torch.cat((idx, idx_next), dim=1)
        return idx
