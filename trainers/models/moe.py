"""Mixture-of-Experts GPT: the cockpit GPT with top-2 routed expert MLPs on every other block (GShard,
Lepikhin et al. 2020; Switch Transformer, Fedus et al. 2021), written for cockpit in plain PyTorch.

    x_l+1 = x_l + Attn(LN(x_l));  x_l+1 = x_l+1 + FFN_l(LN(x_l+1))
    FFN_l = MLP for even l (dense), MoE for odd l:
        p      = softmax(x W_r)                                   router probabilities over E experts (fp32)
        top-2  e1, e2 = argmax p;  g_i = p_ei / (p_e1 + p_e2)     renormalised gates (GShard)
        MoE(x) = Σ_i g_i · Expert_ei(x)                            for the choices that fit in the capacity
Capacity: every expert takes at most C = ceil(capacity_factor · tokens · k / E) token-choices per batch; first
choices are placed before second choices (GShard's priority), and choices beyond C are dropped (the token
keeps its residual; `dropped` counts them).
Load-balancing loss (Switch, eq. 4): L_bal = E · Σ_e f_e · P_e, f_e = share of token-choices routed to e,
P_e = mean router probability of e. It equals 1 for a uniform router and grows as routing collapses;
`aux_loss_coef · L_bal` (mean over MoE layers) is added to the training loss.

Expert statistics reach the event log through `eval_fields()`, which returns the `experts` field of the
`eval` event: {"counts": [int] * n_expert, "balance_loss": float, "dropped": int, "per_layer": [[int]]}
    counts       token-choices routed to each expert (summed over MoE layers, before capacity drops) over the
                 training steps since the previous report
    balance_loss mean L_bal over those steps (1.0 = perfectly balanced)
    dropped      token-choices dropped for capacity over those steps
    per_layer    the counts of each MoE layer
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from kernels.integrate import LayerNorm
from trainers.models.contract import LanguageModelBase, at_least, divisible, fraction, require
from trainers.models.gpt import MLP, CausalSelfAttention


@dataclass
class Config:
    vocab_size: int = 65
    block_size: int = 256
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.0
    bias: bool = False
    n_expert: int = 8
    top_k: int = 2
    capacity_factor: float = 1.25   # C = ceil(capacity_factor · tokens · top_k / n_expert)
    aux_loss_coef: float = 0.01     # weight of the load-balancing loss
    moe_every: int = 2              # MoE on blocks 1, 3, 5, ... (every other block)
    activation_checkpointing: bool = False
    kernels: str = "torch"          # triton: the shared GPT blocks use fused LayerNorm / GELU

    def __post_init__(self):  # what the layers below need (trainers/models/contract.py, Config checks)
        at_least(self, 1, "vocab_size", "block_size", "n_layer", "n_head", "n_embd", "n_expert", "top_k",
                 "moe_every")
        at_least(self, 0, "aux_loss_coef")
        require(self.capacity_factor > 0, self, "capacity_factor", "must be greater than 0 (1.25 is usual)")
        fraction(self, "dropout")
        divisible(self, "n_embd", "n_head", "each head attends over n_embd / n_head channels")
        require(self.top_k <= self.n_expert, self, "top_k",
                f"must be at most model.n_expert={self.n_expert} (each token picks top_k different experts)")


class MoE(nn.Module):
    """Top-k routed expert MLPs with a fixed capacity: tokens are scattered into an (E, C, d) slot buffer,
    all experts run as one batched matmul, and each token gathers its kept slots back (no data-dependent
    shapes, so the layer also runs on the meta device for memory estimates)."""

    def __init__(self, cfg: Config):
        super().__init__()
        E, C, H = cfg.n_expert, cfg.n_embd, 4 * cfg.n_embd
        self.n_expert, self.top_k, self.capacity_factor = E, cfg.top_k, cfg.capacity_factor
        self.router = nn.Linear(C, E, bias=False)
        # E expert MLPs (GPT's c_fc -> GELU -> c_proj), stacked for one batched matmul
        self.c_fc = nn.Parameter(torch.empty(E, C, H))
        self.c_proj = nn.Parameter(torch.empty(E, H, C))
        # biases stay 1-D per expert, so the optimizer's "no weight decay below 2-D" rule applies to them
        self.b_fc = nn.ParameterList([torch.zeros(H) for _ in range(E)]) if cfg.bias else None
        self.b_proj = nn.ParameterList([torch.zeros(C) for _ in range(E)]) if cfg.bias else None
        self.dropout = nn.Dropout(cfg.dropout)
        self.last_stats = None  # (counts (E,), balance loss, dropped) of the latest forward, as tensors

    def capacity(self, n_tokens: int) -> int:
        return math.ceil(self.capacity_factor * n_tokens * self.top_k / self.n_expert)

    def forward(self, x):
        B, T, C = x.shape
        x = x.reshape(-1, C)                                                 # (N, C) tokens
        N, E, k = x.size(0), self.n_expert, self.top_k
        probs = F.softmax(self.router(x).float(), dim=-1)                    # (N, E)
        top_p, top_e = probs.topk(k, dim=-1)                                 # (N, k)
        gates = top_p / top_p.sum(dim=-1, keepdim=True)
        # capacity: position of each token-choice in its expert's queue, first choices before second choices
        cap = self.capacity(N)
        onehot = F.one_hot(top_e.t().reshape(-1), E)                         # (k·N, E), choice-major order
        position = ((onehot.cumsum(dim=0) - 1) * onehot).sum(-1).view(k, N).t()  # (N, k)
        keep = position < cap
        # load-balancing loss (Switch): E · Σ_e f_e P_e
        counts = onehot.sum(0)                                               # (E,) token-choices per expert
        balance = E * ((counts.float() / (N * k)) * probs.mean(0)).sum()
        # dispatch: slot e·cap + position; dropped choices go to a spare slot that is never read back
        slot = torch.where(keep, top_e * cap + position, E * cap)            # (N, k)
        slots = x.new_zeros(E * cap + 1, C).index_add_(0, slot.reshape(-1), x.repeat_interleave(k, dim=0))
        h = torch.bmm(slots[:-1].view(E, cap, C), self.c_fc)                 # (E, cap, 4C)
        if self.b_fc is not None:
            h = h + torch.stack(list(self.b_fc)).unsqueeze(1)
        h = torch.bmm(F.gelu(h, approximate="tanh"), self.c_proj)            # (E, cap, C)
        if self.b_proj is not None:
            h = h + torch.stack(list(self.b_proj)).unsqueeze(1)
        h = torch.cat([h.reshape(E * cap, C), h.new_zeros(1, C)])            # spare slot outputs 0
        # combine: y = Σ_i g_i · Expert_ei(x) over the kept choices
        y = (h[slot] * (gates * keep).unsqueeze(-1).to(h.dtype)).sum(dim=1)  # (N, C)
        self.last_stats = (counts.detach(), balance.detach(), (~keep).sum().detach())
        return self.dropout(y).view(B, T, C), balance


class Block(nn.Module):
    def __init__(self, cfg: Config, moe: bool):
        super().__init__()
        fused = cfg.kernels == "triton"
        self.ln_1 = LayerNorm(cfg.n_embd, bias=cfg.bias, fused=fused)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = LayerNorm(cfg.n_embd, bias=cfg.bias, fused=fused)
        self.mlp = MoE(cfg) if moe else MLP(cfg)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        if isinstance(self.mlp, MoE):
            y, balance = self.mlp(self.ln_2(x))
            return x + y, balance
        return x + self.mlp(self.ln_2(x)), x.new_zeros((), dtype=torch.float32)


class Model(LanguageModelBase):
    def __init__(self, cfg: Config):
        super().__init__()
        assert cfg.top_k <= cfg.n_expert, "top_k must not exceed n_expert"
        self.config = cfg
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(cfg.vocab_size, cfg.n_embd),
            wpe=nn.Embedding(cfg.block_size, cfg.n_embd),
            drop=nn.Dropout(cfg.dropout),
            h=nn.ModuleList([Block(cfg, moe=(i % cfg.moe_every == cfg.moe_every - 1))
                             for i in range(cfg.n_layer)]),
            ln_f=LayerNorm(cfg.n_embd, bias=cfg.bias, fused=cfg.kernels == "triton"),
        ))
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        self.transformer.wte.weight = self.lm_head.weight  # weight tying
        self.apply(self._init_weights)
        for layer in self.moe_layers:
            # unit-variance router logits at init: routing starts visibly uneven, and the balance loss has
            # something to do (with the GPT's 0.02 every router starts uniform and the loss sits at 1.0)
            nn.init.normal_(layer.router.weight, mean=0.0, std=cfg.n_embd ** -0.5)
        for name, p in self.named_parameters():
            if name.endswith("c_fc"):
                nn.init.normal_(p, mean=0.0, std=0.02)
            elif name.endswith(("c_proj.weight", "c_proj")):  # GPT-2 scaled init of the residual projections
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))
        self._reset_window()

    @property
    def moe_layers(self) -> list[MoE]:
        return [b.mlp for b in self.transformer.h if isinstance(b.mlp, MoE)]

    def _init_weights(self, module):
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(self, idx, targets=None):
        """idx (B, T) -> logits; loss = cross-entropy + aux_loss_coef · mean balance loss of the MoE layers."""
        B, T = idx.shape
        assert T <= self.config.block_size, f"sequence of {T} tokens exceeds block_size {self.config.block_size}"
        pos = torch.arange(0, T, dtype=torch.long, device=idx.device)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))
        balance = x.new_zeros((), dtype=torch.float32)
        for block in self.transformer.h:
            if self.config.activation_checkpointing and self.training:
                x, b = checkpoint(block, x, use_reentrant=False)
            else:
                x, b = block(x)
            balance = balance + b
        balance = balance / max(len(self.moe_layers), 1)
        if self.training and x.device.type != "meta":
            self._record()
        x = self.transformer.ln_f(x)
        if targets is None:
            return self.lm_head(x[:, [-1], :]), None
        logits = self.lm_head(x)
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1)
        if self.training:
            loss = loss + self.config.aux_loss_coef * balance
        return logits, loss

    # --- expert statistics --------------------------------------------------------------------------
    def _reset_window(self):
        E = self.config.n_expert
        self._counts = [[0] * E for _ in self.moe_layers]
        self._balance_sum, self._steps, self._dropped = 0.0, 0, 0
        self._reported = False

    def _record(self):
        """Add the latest training forward's routing statistics to the window since the last report."""
        if self._reported:  # a report (metrics / eval_fields) closed the previous window
            self._reset_window()
        balance = 0.0
        for i, layer in enumerate(self.moe_layers):
            counts, bal, dropped = layer.last_stats
            self._counts[i] = [a + int(b) for a, b in zip(self._counts[i], counts.tolist())]
            balance += float(bal)
            self._dropped += int(dropped)
        self._balance_sum += balance / max(len(self.moe_layers), 1)
        self._steps += 1

    def eval_fields(self) -> dict:
        """The `experts` field of the eval event (see the module docstring); statistics since the last report."""
        self._reported = True
        counts = [sum(c) for c in zip(*self._counts)] if self._counts else []
        return {"experts": {"counts": counts,
                            "balance_loss": self._balance_sum / max(self._steps, 1),
                            "dropped": self._dropped,
                            "per_layer": [list(c) for c in self._counts]}}

    def metrics(self) -> dict:
        """Balance loss and dropped share of token-choices since the last report (for the eval metrics)."""
        fields = self.eval_fields()["experts"]
        routed = max(sum(fields["counts"]), 1)
        return {"balance_loss": fields["balance_loss"], "dropped_frac": fields["dropped"] / routed}
