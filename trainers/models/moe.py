"""Mixture-of-Experts GPT: the cockpit GPT with top-k routed expert MLPs on every other block (GShard,
Lepikhin et al. 2020; Switch Transformer, Fedus et al. 2021), written for cockpit in plain PyTorch.

    x_l+1 = x_l + Attn(LN(x_l));  x_l+1 = x_l+1 + FFN_l(LN(x_l+1))
    FFN_l = MLP for even l (dense), MoE for odd l:
        z      = x W_r,  p = softmax(z)                           router logits and probabilities over E experts
        top-k  e_1..e_k = argmax_k p
        gates  k = 1: g_1 = p_e1                                  the raw probability (Switch)
               k > 1: g_i = p_ei / Σ_j p_ej                       renormalised over the chosen (GShard, Mixtral)
        MoE(x) = Σ_i g_i · Expert_ei(x)                            for the choices that fit in the capacity
With k = 1 a renormalised gate would be 1 for every token, and the router would get no gradient from the
task loss (only from the balance loss); Switch multiplies the expert's output by p_e1 for that reason.
The router's logits and softmax are computed in float32 even under bf16 autocast (Switch's "selective
precision": the exponentials of a bf16 router are too coarse to rank experts stably).

Capacity: in training every expert takes at most C = ceil(capacity_factor · tokens · k / E) token-choices
per batch; first choices are placed before second choices (GShard's priority), and choices beyond C are
dropped (the token keeps its residual; `dropped` counts them). At eval and generation (model.eval()) the
capacity is eval_capacity_factor's: 0, the default, drops nothing (each expert's buffer holds the busiest
expert's tokens), so a token's output never depends on which other tokens share its batch or context and
eval losses do not move with the eval batch size; a value > 0 applies C with that factor, as Switch's
separate eval capacity factor does.

Auxiliary losses, added to the training loss (means over the MoE layers):
    load balancing (Switch, eq. 4):  L_bal = E · Σ_e f_e · P_e,  f_e = share of token-choices routed to e,
        P_e = mean router probability of e; 1 for a uniform router, growing as routing collapses; weight
        aux_loss_coef.
    router z-loss (ST-MoE, Zoph et al. 2022, eq. 5):  L_z = mean over tokens of (log Σ_e exp z_e)²; keeps the
        router logits small, which stabilises training; weight z_loss_coef (1e-3 as ST-MoE and transformers'
        Switch config; 0 turns it off).

With kernels="triton" the LayerNorms, the GELU of the dense MLPs and of the experts, and the classifier's
linear + cross-entropy run the fused kernels.

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

from kernels import integrate
from kernels.integrate import LayerNorm, fp32
from trainers.internals import array, attention_arrays, logit_lens
from trainers.models.contract import LanguageModelBase, at_least, divisible, fraction, head_and_loss, require
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
    capacity_factor: float = 1.25   # C = ceil(capacity_factor · tokens · top_k / n_expert), in training
    eval_capacity_factor: float = 0.0  # the same at eval and generation; 0: no token is ever dropped there
    aux_loss_coef: float = 0.01     # weight of the load-balancing loss
    z_loss_coef: float = 1e-3       # weight of the router z-loss (ST-MoE); 0: off
    moe_every: int = 2              # MoE on blocks 1, 3, 5, ... (every other block)
    activation_checkpointing: bool = False
    kernels: str = "torch"          # triton: fused LayerNorm, GELU and linear + cross-entropy

    def __post_init__(self):  # what the layers below need (trainers/models/contract.py, Config checks)
        at_least(self, 1, "vocab_size", "block_size", "n_layer", "n_head", "n_embd", "n_expert", "top_k",
                 "moe_every")
        at_least(self, 0, "aux_loss_coef", "z_loss_coef", "eval_capacity_factor")
        require(self.capacity_factor > 0, self, "capacity_factor", "must be greater than 0 (1.25 is usual)")
        fraction(self, "dropout")
        divisible(self, "n_embd", "n_head", "each head attends over n_embd / n_head channels")
        require(self.top_k <= self.n_expert, self, "top_k",
                f"must be at most model.n_expert={self.n_expert} (each token picks top_k different experts)")


class MoE(nn.Module):
    """Top-k routed expert MLPs with a fixed capacity: tokens are scattered into an (E, C, d) slot buffer,
    all experts run as one batched matmul, and each token gathers its kept slots back (no data-dependent
    shapes in training, so the layer also runs on the meta device for memory estimates)."""

    def __init__(self, cfg: Config):
        super().__init__()
        E, C, H = cfg.n_expert, cfg.n_embd, 4 * cfg.n_embd
        self.n_expert, self.top_k = E, cfg.top_k
        self.capacity_factor, self.eval_capacity_factor = cfg.capacity_factor, cfg.eval_capacity_factor
        self.fused = cfg.kernels == "triton"
        self.router = nn.Linear(C, E, bias=False)
        # E expert MLPs (GPT's c_fc -> GELU -> c_proj), stacked for one batched matmul
        self.c_fc = nn.Parameter(torch.empty(E, C, H))
        self.c_proj = nn.Parameter(torch.empty(E, H, C))
        # biases stay 1-D per expert, so the optimizer's "no weight decay below 2-D" rule applies to them
        self.b_fc = nn.ParameterList([torch.zeros(H) for _ in range(E)]) if cfg.bias else None
        self.b_proj = nn.ParameterList([torch.zeros(C) for _ in range(E)]) if cfg.bias else None
        self.dropout = nn.Dropout(cfg.dropout)
        self.last_stats = None  # (counts (E,), balance loss, dropped) of the latest forward, as tensors

    def capacity(self, n_tokens: int, factor: float | None = None) -> int:
        return math.ceil((factor or self.capacity_factor) * n_tokens * self.top_k / self.n_expert)

    def queue(self, top_e):
        """top_e (N, k) chosen experts -> (token-choices per expert (E,), each choice's position in its expert's
        queue (N, k)): first choices are queued before second choices (GShard's priority); a position at or
        past the capacity is a dropped choice."""
        N, k = top_e.shape
        onehot = F.one_hot(top_e.t().reshape(-1), self.n_expert)            # (k·N, E), choice-major order
        position = ((onehot.cumsum(dim=0) - 1) * onehot).sum(-1).view(k, N).t()
        return onehot.sum(0), position

    def router_logits(self, x):
        """x (N, C) -> router logits (N, E) in float32, with autocast off: a bf16 router's logits would be
        rounded to 8 significant bits before the softmax that ranks the experts (Switch's selective precision)."""
        with fp32(x):
            return F.linear(x.float(), self.router.weight.float())

    def forward(self, x, z_loss: bool = False):
        """x (B, T, C) -> (y (B, T, C), balance loss); with z_loss, (y, balance loss, router z-loss)."""
        B, T, C = x.shape
        x = x.reshape(-1, C)                                                 # (N, C) tokens
        N, E, k = x.size(0), self.n_expert, self.top_k
        logits = self.router_logits(x)                                       # (N, E) fp32
        probs = F.softmax(logits, dim=-1)
        top_p, top_e = probs.topk(k, dim=-1)                                 # (N, k)
        gates = top_p if k == 1 else top_p / top_p.sum(dim=-1, keepdim=True)  # Switch's raw p for k = 1
        counts, position = self.queue(top_e)                                 # (E,), (N, k)
        if self.training or self.eval_capacity_factor > 0:
            cap = self.capacity(N, None if self.training else self.eval_capacity_factor)
        else:  # no drops: room for the busiest expert's tokens (the meta device has no values: every token)
            cap = N if x.device.type == "meta" else max(int(counts.max()), 1)
        keep = position < cap
        # load-balancing loss (Switch): E · Σ_e f_e P_e
        balance = E * ((counts.float() / (N * k)) * probs.mean(0)).sum()
        # dispatch: slot e·cap + position; dropped choices go to a spare slot that is never read back
        slot = torch.where(keep, top_e * cap + position, E * cap)            # (N, k)
        slots = x.new_zeros(E * cap + 1, C).index_add_(0, slot.reshape(-1), x.repeat_interleave(k, dim=0))
        h = torch.bmm(slots[:-1].view(E, cap, C), self.c_fc)                 # (E, cap, 4C)
        if self.b_fc is not None:
            h = h + torch.stack(list(self.b_fc)).unsqueeze(1)
        h = integrate.gelu_tanh(h) if self.fused else F.gelu(h, approximate="tanh")
        h = torch.bmm(h, self.c_proj)                                        # (E, cap, C)
        if self.b_proj is not None:
            h = h + torch.stack(list(self.b_proj)).unsqueeze(1)
        h = torch.cat([h.reshape(E * cap, C), h.new_zeros(1, C)])            # spare slot outputs 0
        # combine: y = Σ_i g_i · Expert_ei(x) over the kept choices
        y = (h[slot] * (gates * keep).unsqueeze(-1).to(h.dtype)).sum(dim=1)  # (N, C)
        self.last_stats = (counts.detach(), balance.detach(), (~keep).sum().detach())
        y = self.dropout(y).view(B, T, C)
        if z_loss:  # ST-MoE eq. 5: mean over tokens of logsumexp(z)²
            return y, balance, torch.logsumexp(logits, dim=-1).pow(2).mean()
        return y, balance


class Block(nn.Module):
    def __init__(self, cfg: Config, moe: bool):
        super().__init__()
        fused = cfg.kernels == "triton"
        self.ln_1 = LayerNorm(cfg.n_embd, bias=cfg.bias, fused=fused)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = LayerNorm(cfg.n_embd, bias=cfg.bias, fused=fused)
        self.mlp = MoE(cfg) if moe else MLP(cfg)

    def forward(self, x):
        """x -> (x, balance loss, router z-loss); the losses are 0 for a dense block."""
        x = x + self.attn(self.ln_1(x))
        if isinstance(self.mlp, MoE):
            y, balance, z = self.mlp(self.ln_2(x), z_loss=True)
            return x + y, balance, z
        zero = x.new_zeros((), dtype=torch.float32)
        return x + self.mlp(self.ln_2(x)), zero, zero


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
        """idx (B, T) -> logits; loss = cross-entropy + aux_loss_coef · mean balance loss + z_loss_coef · mean
        router z-loss of the MoE layers (the auxiliary terms in training only)."""
        B, T = idx.shape
        assert T <= self.config.block_size, f"sequence of {T} tokens exceeds block_size {self.config.block_size}"
        pos = torch.arange(0, T, dtype=torch.long, device=idx.device)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))
        balance = z_loss = x.new_zeros((), dtype=torch.float32)
        for block in self.transformer.h:
            if self.config.activation_checkpointing and self.training:
                x, b, z = checkpoint(block, x, use_reentrant=False)
            else:
                x, b, z = block(x)
            balance, z_loss = balance + b, z_loss + z
        n_moe = max(len(self.moe_layers), 1)
        balance, z_loss = balance / n_moe, z_loss / n_moe
        if self.training and x.device.type != "meta":
            self._record()
        x = self.transformer.ln_f(x)
        logits, loss = head_and_loss(x, self.lm_head, targets, fused=self.config.kernels == "triton")
        if loss is not None and self.training:
            loss = loss + self.config.aux_loss_coef * balance + self.config.z_loss_coef * z_loss
        return logits, loss

    @torch.no_grad()
    def internals(self, idx, decode):
        """On a probe idx (1, T): the attention maps and logit lens of a GPT (trainers/internals.py), and how
        each MoE layer routes each probe token: its first-choice expert (`expert`), the entropy of the router's
        distribution in nats (`router_entropy`: ln E for a router that cannot decide, 0 for a sure one), and the
        token-choices each expert receives (`expert_load`, adding up to T x top_k per layer), and the token-choices
        that would be dropped were the probe a training batch (`dropped`: past the training capacity
        C = ceil(capacity_factor · T · top_k / E) of their expert; at eval nothing is dropped)."""
        pos = torch.arange(idx.size(1), device=idx.device)
        x = self.transformer.wte(idx) + self.transformer.wpe(pos)
        maps, residuals, first, entropy, load, dropped, names = [], [], [], [], [], [], []
        for i, block in enumerate(self.transformer.h):
            maps.append(block.attn.attention_map(block.ln_1(x)))
            if isinstance(block.mlp, MoE):
                moe = block.mlp
                h = block.ln_2(x + block.attn(block.ln_1(x)))[0]                       # (T, C), the router's input
                p = F.softmax(moe.router_logits(h), dim=-1)                            # (T, E)
                top_e = p.topk(moe.top_k, dim=-1).indices                              # (T, k), as forward picks
                first.append(top_e[:, 0])
                entropy.append(-(p * p.clamp_min(1e-30).log()).sum(-1))
                counts, position = moe.queue(top_e)
                load.append(counts)
                dropped.append((position >= moe.capacity(idx.size(1))).sum())
                names.append(f"layer {i}")
            x, _, _ = block(x)
            residuals.append(x)
        out = [attention_arrays(maps),
               logit_lens(residuals, lambda h: self.lm_head(self.transformer.ln_f(h)), decode)]
        if names:
            out += [array("expert", torch.stack(first), ["layer", "token"], labels=names),
                    array("router_entropy", torch.stack(entropy), ["layer", "token"], labels=names, digits=4),
                    array("expert_load", torch.stack(load), ["layer", "expert"], labels=names),
                    array("dropped", torch.stack(dropped), ["layer"], labels=names)]
        return out

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
