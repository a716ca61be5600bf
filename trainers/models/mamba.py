"""Mamba: a selective state-space language model (Gu & Dao 2023, "Mamba: Linear-Time Sequence Modeling
with Selective State Spaces"), Mamba-1 block, written for cockpit in plain PyTorch.

    x_0    = wte[idx]                                  (no position embedding: the recurrence is ordered)
    x_l+1  = x_l + MambaMixer(RMSNorm(x_l))
    logits = RMSNorm(x_L) @ wte^T                       (weight tying)

MambaMixer (Fig. 3 of the paper), d_inner = expand * n_embd:
    x, z   = in_proj(u)                                 (B, L, d_inner) each
    x      = SiLU(causal depthwise conv1d(x))           (kernel d_conv, left padding only)
    Δ, B, C = x_proj(x)  split (dt_rank, d_state, d_state);  Δ = softplus(dt_proj(Δ))   (input-dependent)
    y      = SelectiveScan(x, Δ, A, B, C, D)            A = -exp(A_log), (d_inner, d_state), diagonal
    out    = out_proj(y * SiLU(z))                      (gated output)

Selective scan (eq. 2a/2b with the zero-order-hold discretisation Ā = exp(ΔA), B̄ ≈ ΔB):
    h_t = exp(Δ_t A) ⊙ h_{t-1} + Δ_t B_t x_t            h: (B, d_inner, d_state)
    y_t = h_t · C_t + D ⊙ x_t

The scan's PyTorch forms live with its fused kernel in kernels/selective_scan.py: training runs the two-level
chunked scan (`selective_scan_chunked`, about 2*sqrt(T) sequential steps), generation one step at a time
(`selective_scan_step`); both are tested against the sequential definition `selective_scan_ref`.

Generation is recurrent: each layer keeps a conv window (B, d_inner, d_conv-1) and the SSM state
(B, d_inner, d_state), so a new token costs O(1) time and memory however long the context is.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from kernels import integrate
from kernels.integrate import RMSNorm, fp32
from kernels.selective_scan import selective_scan_chunked, selective_scan_step
from trainers.internals import array
from trainers.models.contract import (
    RecurrentLanguageModelBase,
    at_least,
    fraction,
    head_and_loss,
    require,
    through_blocks,
)


@dataclass
class Config:
    vocab_size: int = 65
    block_size: int = 256          # training context; generation is not limited by it
    n_layer: int = 4
    n_embd: int = 128
    d_state: int = 16              # N, the state size per channel
    d_conv: int = 4                # causal depthwise conv kernel
    expand: int = 2                # d_inner = expand * n_embd
    dt_rank: int = 0               # 0 -> ceil(n_embd / 16), as in the paper
    dt_min: float = 0.001          # Δ is initialised log-uniformly in [dt_min, dt_max]
    dt_max: float = 0.1
    dt_init_floor: float = 1e-4    # the initial Δ is clamped to at least this (mamba_simple.py's dt_init_floor)
    scan_chunk: int = 0            # chunk length of the training scan; 0 -> ceil(sqrt(T))
    dropout: float = 0.0
    activation_checkpointing: bool = False
    kernels: str = "torch"         # torch | triton (fused selective scan, RMSNorm, linear+cross-entropy)

    def __post_init__(self):  # what the layers below need (trainers/models/contract.py, Config checks)
        at_least(self, 1, "vocab_size", "block_size", "n_layer", "n_embd", "d_state", "d_conv", "expand")
        at_least(self, 0, "dt_rank", "scan_chunk")
        require(self.dt_min > 0, self, "dt_min", "must be greater than 0 (Δ starts log-uniform in [dt_min, dt_max])")
        require(self.dt_max >= self.dt_min, self, "dt_max", f"must be at least model.dt_min={self.dt_min}")
        require(self.dt_init_floor > 0, self, "dt_init_floor", "must be greater than 0 (1e-4 is mamba_simple's)")
        fraction(self, "dropout")


# ----------------------------------------------------------------------------------------------------
# Model

class MambaMixer(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        d_inner = cfg.expand * cfg.n_embd
        self.d_inner, self.d_state, self.d_conv = d_inner, cfg.d_state, cfg.d_conv
        self.dt_rank = cfg.dt_rank or math.ceil(cfg.n_embd / 16)
        self.scan_chunk = cfg.scan_chunk
        self.fused = cfg.kernels == "triton"
        self.in_proj = nn.Linear(cfg.n_embd, 2 * d_inner, bias=False)
        self.conv1d = nn.Conv1d(d_inner, d_inner, cfg.d_conv, groups=d_inner, padding=cfg.d_conv - 1)
        self.x_proj = nn.Linear(d_inner, self.dt_rank + 2 * cfg.d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, d_inner, bias=True)
        self.out_proj = nn.Linear(d_inner, cfg.n_embd, bias=False)
        # S4D-real initialisation: A_n = -(n+1) for every channel; stored as log for positivity
        A = torch.arange(1, cfg.d_state + 1, dtype=torch.float32).repeat(d_inner, 1)
        self.A_log = nn.Parameter(torch.log(A))                     # (d_inner, d_state)
        self.D = nn.Parameter(torch.ones(d_inner))                  # skip connection
        # mamba_simple.py marks both `_no_weight_decay`: decaying A_log pulls every A_n towards -1 (a third of
        # log A over a run with weight_decay 0.1), erasing the S4D spread of time scales (optim.py param_groups)
        self.A_log._no_weight_decay = True
        self.D._no_weight_decay = True
        # Δ initialisation (mamba_simple.py): softplus(bias) log-uniform in [dt_min, dt_max], floored at
        # dt_init_floor, and dt_proj's weight uniform in ±dt_rank^-0.5 so that Δ keeps its variance at init
        nn.init.uniform_(self.dt_proj.weight, -self.dt_rank ** -0.5, self.dt_rank ** -0.5)
        dt = torch.exp(torch.rand(d_inner) * (math.log(cfg.dt_max) - math.log(cfg.dt_min)) + math.log(cfg.dt_min))
        dt = dt.clamp(min=cfg.dt_init_floor)
        with torch.no_grad():
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse of softplus

    def ssm_params(self, x):
        """x (..., d_inner) -> Δ (..., d_inner), B (..., n), C (..., n) (all input-dependent)."""
        dt, B, C = self.x_proj(x).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        return F.softplus(self.dt_proj(dt)), B, C

    def conv_branch(self, u):
        """u (B, L, n_embd) -> x, the scan's input after the causal conv and SiLU, and the gate z (B, L, d_inner)."""
        L = u.size(1)
        x, z = self.in_proj(u).chunk(2, dim=-1)                     # (B, L, d_inner) each
        x = self.conv1d(x.transpose(1, 2))[..., :L].transpose(1, 2)  # causal: drop the right padding
        return F.silu(x), z

    def forward(self, u):
        x, z = self.conv_branch(u)
        delta, Bm, Cm = self.ssm_params(x)
        A = -torch.exp(self.A_log.float())
        with fp32(x):  # the scan runs in fp32 even under autocast: exp and long products are precision-sensitive
            if self.fused:  # one Triton program per (batch, channel block) walks the sequence
                y, _ = integrate.selective_scan(x.float(), delta.float(), A, Bm.float(), Cm.float(),
                                                self.D.float(), chunk=self.scan_chunk or None)
            else:
                y, _ = selective_scan_chunked(x.float(), delta.float(), A, Bm.float(), Cm.float(), self.D.float(),
                                              chunk=self.scan_chunk or None)
        y = y.to(x.dtype) * F.silu(z)
        return self.out_proj(y)

    def step(self, u_t, state):
        """One token u_t (B, n_embd) with state (conv_window (B, d_inner, d_conv-1), h (B, d_inner, d_state))."""
        conv_window, h = state
        x, z = self.in_proj(u_t).chunk(2, dim=-1)
        window = torch.cat([conv_window, x.unsqueeze(-1)], dim=-1)  # (B, d_inner, d_conv)
        x = (window * self.conv1d.weight[:, 0, :]).sum(-1) + self.conv1d.bias
        x = F.silu(x)
        delta, Bm, Cm = self.ssm_params(x)
        A = -torch.exp(self.A_log.float())
        with fp32(x):
            y, h = selective_scan_step(x.float(), delta.float(), A, Bm.float(), Cm.float(), self.D.float(), h)
        y = y.to(x.dtype) * F.silu(z)
        return self.out_proj(y), (window[..., 1:], h)

    def init_state(self, batch: int, device, dtype=torch.float32):
        return (torch.zeros(batch, self.d_inner, self.d_conv - 1, device=device, dtype=dtype),
                torch.zeros(batch, self.d_inner, self.d_state, device=device, dtype=torch.float32))


class Block(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        self.norm = RMSNorm(cfg.n_embd, fused=cfg.kernels == "triton")
        self.mixer = MambaMixer(cfg)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x):
        return x + self.drop(self.mixer(self.norm(x)))

    def step(self, x_t, state):
        y, state = self.mixer.step(self.norm(x_t), state)
        return x_t + y, state


class Model(RecurrentLanguageModelBase):
    def __init__(self, cfg: Config):
        super().__init__()
        self.config = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.drop = nn.Dropout(cfg.dropout)
        self.layers = nn.ModuleList([Block(cfg) for _ in range(cfg.n_layer)])
        self.norm_f = RMSNorm(cfg.n_embd, fused=cfg.kernels == "triton")
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # weight tying
        # mamba_ssm's initialisation (mixer_seq_simple.py `_init_weights`): the embedding N(0, 0.02); in_proj and
        # x_proj keep PyTorch's default Linear init (kaiming-uniform, U(±1/sqrt(fan_in))), which the reference
        # never overwrites; out_proj gets that default divided by sqrt(n_layer), the prenorm residual
        # rescaling with one residual branch per layer (GPT-2's 1/sqrt(N) for the residual layers)
        nn.init.normal_(self.wte.weight, std=0.02)
        with torch.no_grad():
            for layer in self.layers:
                layer.mixer.out_proj.weight /= math.sqrt(cfg.n_layer)

    def forward(self, idx, targets=None):
        """idx (B, T) -> logits (B, T, vocab); loss is mean cross-entropy with negative targets ignored."""
        x = self.drop(self.wte(idx))
        x = through_blocks(self.layers, x, checkpointed=self.config.activation_checkpointing and self.training)
        x = self.norm_f(x)
        return head_and_loss(x, self.lm_head, targets, fused=self.config.kernels == "triton")

    @torch.no_grad()
    def internals(self, idx, decode):
        """On a probe idx (1, T), each layer's selectivity: the step size Δ_t it takes at each token (averaged
        over channels; a large Δ resets the state towards the token, a small one keeps the past), the share of
        the state it keeps there, mean exp(Δ_t A), and the spread of its time scales, log10(-A_n) per state
        n averaged over channels (the S4D initialisation's 1..d_state, drifting as it learns)."""
        x = self.wte(idx)
        deltas, kept, spectra = [], [], []
        for layer in self.layers:
            mixer = layer.mixer
            xc, _ = mixer.conv_branch(layer.norm(x))
            delta = mixer.ssm_params(xc)[0][0].float()                       # (T, d_inner), > 0 (softplus)
            A = -torch.exp(mixer.A_log.float())                              # (d_inner, d_state)
            deltas.append(delta.mean(-1))
            kept.append(torch.exp(delta[:, :, None] * A).mean((1, 2)))       # (T,)
            spectra.append(torch.log10(-A).mean(0))                          # (d_state,)
            x = layer(x)
        names = [f"layer {i}" for i in range(len(self.layers))]
        return [array("delta", torch.stack(deltas), ["layer", "token"], labels=names),
                array("exp_delta_A", torch.stack(kept), ["layer", "token"], labels=names, digits=4),
                array("A", torch.stack(spectra), ["layer", "state"], labels=names, digits=3)]

    # --- recurrent inference ------------------------------------------------------------------------
    def init_state(self, batch: int, device):
        return [layer.mixer.init_state(batch, device, self.wte.weight.dtype) for layer in self.layers]

    def step(self, token, state):
        """token (B,) -> logits (B, vocab) and the new state; O(1) in the context length."""
        x = self.wte(token)
        new_state = []
        for layer, s in zip(self.layers, state):
            x, s = layer.step(x, s)
            new_state.append(s)
        return self.lm_head(self.norm_f(x)), new_state
