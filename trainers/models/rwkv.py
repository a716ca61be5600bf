"""RWKV-6 "Finch": an attention-free recurrent language model (Peng et al. 2024, "Eagle and Finch: RWKV with
Matrix-Valued States and Dynamic Recurrence"), written for cockpit in plain PyTorch.

    x_0    = LN0(wte[idx])
    x_l+1  = x_l + TimeMix(LN(x_l));   x_l+1 = x_l+1 + ChannelMix(LN(x_l+1))
    logits = LN(x_L) @ W_head                                     (untied head, as in RWKV-LM)

TimeMix (Finch, section 4): data-dependent token shift (ddlerp), data-dependent decay, matrix-valued state:
    lerp_□(a, b)   = a + (b - a) ⊙ (μ_□ + lora_□(a + (b - a) ⊙ μ_x)),  lora(x) = tanh(x A) B   (a = x_t, b = x_t-1)
    r, k, v, g     = ddlerp_□(x_t, x_t-1) W_□;   g = SiLU(g)
    w_t            = exp(-exp(d + lora_d(ddlerp_w(x_t, x_t-1))))   per channel, in (0, 1)
    wkv_t          = r_t · (S_t-1 + diag(u) k_t^T v_t)             per head; S is (head_size × head_size)
    S_t            = diag(w_t) S_t-1 + k_t^T v_t
    out            = W_o (GroupNorm_heads(wkv) ⊙ g)
ChannelMix:  k = ReLU(W_k lerp_k)^2;  out = σ(W_r lerp_r) ⊙ (W_v k)

Training recipe of RWKV-LM (RWKV-v5/src/model.py, the x060 code, and rwkv_v6_demo.py's initialisation notes):
  - L2Wrap on the logits (kernels/logits.py): the loss is unchanged, and the largest logit of each position gets
    an extra gradient l2wrap * max / positions that keeps the logits from drifting up (model.l2wrap, 1e-4 as
    the reference; 0 turns it off);
  - initialisation: orthogonal receptance, value, channel-mix key (gain 1), key and gate (gain 0.1), zero
    output / channel-mix value and receptance, ln_x's gain ((1 + layer) / n_layer)^0.7, a ±1e-4 embedding;
  - optimizer groups (`configure_optimizers`): no weight decay on the LoRA matrices (maa_A/B, decay_A/B: the
    reference decays only `.weight` matrices) nor on the 1-D mixing, decay and bonus vectors, and the decay d
    (`time_decay`) learns at 2x the schedule's lr (its lr_2x group); marked on the parameters for
    trainers/optim.py param_groups (`_no_weight_decay`, `_lr_scale`).

The WKV recurrence's PyTorch forms live with its fused kernel in kernels/wkv.py: training runs the chunked
parallel form (`wkv_chunked`, exact in fp32 however strong the decay), generation one step at a time
(`wkv_step`); both are tested against the recurrence `wkv_ref`.

Generation is recurrent: per layer two shifted tokens (B, C) and the wkv state (B, H, K, K), a constant
amount of memory per generated token however long the context grows.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from kernels import integrate
from kernels.integrate import LayerNorm, fp32
from kernels.wkv import wkv_chunked, wkv_step
from trainers.internals import array
from trainers.models.contract import (
    RecurrentLanguageModelBase,
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
    block_size: int = 256          # training context; generation is not limited by it
    n_layer: int = 4
    n_embd: int = 128
    head_size: int = 32            # K = V = head_size; n_head = n_embd // head_size
    ffn_mult: float = 3.5          # channel-mix hidden size = ffn_mult * n_embd (rounded to 32)
    mix_lora: int = 32             # rank of the token-shift LoRA (D_MIX_LORA)
    decay_lora: int = 64           # rank of the decay LoRA (D_DECAY_LORA)
    wkv_chunk: int = 16            # chunk length of the training form
    l2wrap: float = 1e-4           # RWKV-LM's L2Wrap factor on the logits (0: off)
    decay_lr_scale: float = 2.0    # the decay d learns at this multiple of the lr (RWKV-LM's lr_2x group)
    dropout: float = 0.0
    activation_checkpointing: bool = False
    kernels: str = "torch"         # torch | triton (fused WKV, LayerNorm, linear+cross-entropy)

    def __post_init__(self):  # what the layers below need (trainers/models/contract.py, Config checks)
        at_least(self, 1, "vocab_size", "block_size", "n_layer", "n_embd", "head_size", "mix_lora", "decay_lora",
                 "wkv_chunk")
        require(self.ffn_mult > 0, self, "ffn_mult", "must be greater than 0 (3.5 is RWKV-6's)")
        at_least(self, 0, "l2wrap")
        require(self.decay_lr_scale > 0, self, "decay_lr_scale", "must be greater than 0 (2.0 is RWKV-LM's)")
        fraction(self, "dropout")
        divisible(self, "n_embd", "head_size", "the channels split into heads of head_size")


# ----------------------------------------------------------------------------------------------------
# Model

def token_shift(x):
    """x (B, T, C) -> x_t-1 for every t (zeros before the first token)."""
    return F.pad(x, (0, 0, 1, -1))


class TimeMix(nn.Module):
    def __init__(self, cfg: Config, layer_id: int):
        super().__init__()
        C = cfg.n_embd
        self.n_head, self.head_size, self.chunk = C // cfg.head_size, cfg.head_size, cfg.wkv_chunk
        self.fused = cfg.kernels == "triton"
        assert C % cfg.head_size == 0, "n_embd must be divisible by head_size"
        # RWKV-LM's layer-dependent initialisation of the mixing coefficients and decays
        ratio_0_to_1 = layer_id / max(cfg.n_layer - 1, 1)
        ratio_1_to_almost0 = 1.0 - layer_id / cfg.n_layer
        ddd = torch.arange(C, dtype=torch.float32) / C
        self.maa_x = nn.Parameter(1.0 - ddd.pow(ratio_1_to_almost0))
        self.maa_wkvrg = nn.Parameter(torch.stack([                          # μ for w, k, v, r, g
            1.0 - ddd.pow(ratio_1_to_almost0),
            1.0 - ddd.pow(ratio_1_to_almost0),
            1.0 - (ddd.pow(ratio_1_to_almost0) + 0.3 * ratio_0_to_1),
            1.0 - ddd.pow(0.5 * ratio_1_to_almost0),
            1.0 - ddd.pow(0.5 * ratio_1_to_almost0)]).view(-1))             # (5 * C,) 1-D: no weight decay
        self.maa_A = nn.Parameter(torch.zeros(C, 5 * cfg.mix_lora))         # ddlerp LoRA, 5 heads at once
        self.maa_B = nn.Parameter(torch.empty(5, cfg.mix_lora, C).uniform_(-0.01, 0.01))
        n = torch.arange(C, dtype=torch.float32)
        self.decay = nn.Parameter(-6 + 5 * (n / max(C - 1, 1)).pow(0.7 + 1.3 * ratio_0_to_1))  # d, per channel
        self.decay_A = nn.Parameter(torch.zeros(C, cfg.decay_lora))
        self.decay_B = nn.Parameter(torch.empty(cfg.decay_lora, C).uniform_(-0.01, 0.01))
        for lora in (self.maa_A, self.maa_B, self.decay_A, self.decay_B):  # RWKV-LM decays `.weight` matrices only
            lora._no_weight_decay = True
        self.decay._lr_scale = cfg.decay_lr_scale                           # RWKV-LM's lr_2x group for time_decay
        zigzag = ((n + 1) % 3 - 1) * 0.1
        self.bonus = nn.Parameter(ratio_0_to_1 * (1 - n / max(C - 1, 1)) + zigzag)  # u ("time_faaaa")
        self.receptance = nn.Linear(C, C, bias=False)
        self.key = nn.Linear(C, C, bias=False)
        self.value = nn.Linear(C, C, bias=False)
        self.gate = nn.Linear(C, C, bias=False)
        self.output = nn.Linear(C, C, bias=False)
        self.ln_x = nn.GroupNorm(self.n_head, C, eps=64e-5)                  # per-head norm (eps 1e-5 * 8²)
        nn.init.constant_(self.ln_x.weight, ((1 + layer_id) / cfg.n_layer) ** 0.7)  # RWKV-LM's layer scale

    def ddlerp_mix(self, x, xx):
        """The data-dependent token-shift coefficients μ_□ + lora_□(x + xx ⊙ μ_x) of w, k, v, r, g: (5, ..., C),
        the share of the previous token (xx = x_t-1 - x_t) each channel of each projection reads."""
        lora = torch.tanh((x + xx * self.maa_x) @ self.maa_A)                # (..., 5 * rank)
        lora = lora.view(-1, 5, lora.size(-1) // 5).transpose(0, 1)          # (5, N, rank)
        m = torch.bmm(lora, self.maa_B).view(5, *x.shape)                    # (5, ..., C)
        return self.maa_wkvrg.view(5, *([1] * (x.dim() - 1)), -1) + m

    def project(self, x, x_prev):
        """ddlerp token shift -> r, k, v, g, log_w, each (..., C)."""
        xx = x_prev - x
        xw, xk, xv, xr, xg = (x + xx * self.ddlerp_mix(x, xx)).unbind(0)
        r, k, v = self.receptance(xr), self.key(xk), self.value(xv)
        g = F.silu(self.gate(xg))
        log_w = -torch.exp(self.decay + torch.tanh(xw @ self.decay_A) @ self.decay_B)  # log of w = exp(-exp(.))
        return r, k, v, g, log_w

    def heads(self, t):
        return t.view(*t.shape[:-1], self.n_head, self.head_size)

    def forward(self, x):
        B, T, C = x.shape
        r, k, v, g, log_w = self.project(x, token_shift(x))
        u = self.bonus.view(self.n_head, self.head_size)
        with fp32(x):  # the state recurrence in fp32, also under bf16 autocast
            if self.fused:  # one Triton program per (batch, head) carries the (K, K) state through time
                y, _ = integrate.wkv(*(self.heads(t.float()) for t in (r, k, v, log_w)), u.float(),
                                     chunk=self.chunk)
            else:
                y, _ = wkv_chunked(*(self.heads(t.float()) for t in (r, k, v, log_w)), u.float(), chunk=self.chunk)
        y = self.ln_x(y.reshape(B * T, C)).view(B, T, C).to(x.dtype)
        return self.output(y * g)

    def step(self, x, state):
        """x (B, C); state = (previous x (B, C), wkv state (B, H, K, K))."""
        x_prev, S = state
        r, k, v, g, log_w = self.project(x, x_prev)
        u = self.bonus.view(self.n_head, self.head_size)
        with fp32(x):
            y, S = wkv_step(*(self.heads(t.float()) for t in (r, k, v, log_w)), u.float(), S)
        y = self.ln_x(y.reshape(x.size(0), -1)).to(x.dtype)
        return self.output(y * g), (x, S)


class ChannelMix(nn.Module):
    def __init__(self, cfg: Config, layer_id: int):
        super().__init__()
        C = cfg.n_embd
        hidden = int(cfg.ffn_mult * C) // 32 * 32 or 32
        ratio_1_to_almost0 = 1.0 - layer_id / cfg.n_layer
        ddd = torch.arange(C, dtype=torch.float32) / C
        self.maa_k = nn.Parameter(1.0 - ddd.pow(ratio_1_to_almost0))
        self.maa_r = nn.Parameter(1.0 - ddd.pow(ratio_1_to_almost0))
        self.key = nn.Linear(C, hidden, bias=False)
        self.receptance = nn.Linear(C, C, bias=False)
        self.value = nn.Linear(hidden, C, bias=False)

    def mix(self, x, x_prev):
        xx = x_prev - x
        k = torch.relu(self.key(x + xx * self.maa_k)) ** 2                   # squared ReLU
        return torch.sigmoid(self.receptance(x + xx * self.maa_r)) * self.value(k)

    def forward(self, x):
        return self.mix(x, token_shift(x))

    def step(self, x, x_prev):
        return self.mix(x, x_prev), x


class Block(nn.Module):
    def __init__(self, cfg: Config, layer_id: int):
        super().__init__()
        fused = cfg.kernels == "triton"
        self.ln1 = LayerNorm(cfg.n_embd, fused=fused)
        self.att = TimeMix(cfg, layer_id)
        self.ln2 = LayerNorm(cfg.n_embd, fused=fused)
        self.ffn = ChannelMix(cfg, layer_id)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x):
        x = x + self.drop(self.att(self.ln1(x)))
        return x + self.drop(self.ffn(self.ln2(x)))

    def step(self, x, state):
        att_state, ffn_prev = state
        y, att_state = self.att.step(self.ln1(x), att_state)
        x = x + y
        y, ffn_prev = self.ffn.step(self.ln2(x), ffn_prev)
        return x + y, (att_state, ffn_prev)


class Model(RecurrentLanguageModelBase):
    def __init__(self, cfg: Config):
        super().__init__()
        self.config = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        fused = cfg.kernels == "triton"
        self.ln0 = LayerNorm(cfg.n_embd, fused=fused)
        self.blocks = nn.ModuleList([Block(cfg, i) for i in range(cfg.n_layer)])
        self.ln_out = LayerNorm(cfg.n_embd, fused=fused)
        self.head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        # RWKV-LM's initialisation: tiny embedding (LN0 rescales it), orthogonal projections (key and gate at
        # gain 0.1), zero outputs
        nn.init.uniform_(self.wte.weight, -1e-4, 1e-4)
        gain = 0.5 * math.sqrt(cfg.vocab_size / cfg.n_embd) if cfg.vocab_size > cfg.n_embd else 0.5
        nn.init.orthogonal_(self.head.weight, gain=gain)
        for block in self.blocks:
            att = block.att
            for lin, g in ((att.receptance, 1), (att.key, 0.1), (att.value, 1), (att.gate, 0.1), (block.ffn.key, 1)):
                nn.init.orthogonal_(lin.weight, gain=g)
            for lin in (block.att.output, block.ffn.receptance, block.ffn.value):
                nn.init.zeros_(lin.weight)

    def forward(self, idx, targets=None):
        """idx (B, T) -> logits (B, T, vocab); loss is mean cross-entropy with negative targets ignored."""
        x = self.ln0(self.wte(idx))
        x = through_blocks(self.blocks, x, checkpointed=self.config.activation_checkpointing and self.training)
        x = self.ln_out(x)
        return head_and_loss(x, self.head, targets, fused=self.config.kernels == "triton", l2wrap=self.config.l2wrap)

    QUANTILES = (0.0, 0.25, 0.5, 0.75, 1.0)
    MIXES = ("w", "k", "v", "r", "g")          # TimeMix's token-shifted projections, in maa_wkvrg's order

    @torch.no_grad()
    def internals(self, idx, decode):
        """On a probe idx (1, T), per layer:
            decay           each head's data-dependent decay w_t = exp(-exp(.)) in (0, 1) over the probe's tokens
                            and the head's channels (quantiles; a head near 1 keeps a long memory, one near 0
                            only the last tokens)
            state_norm      ‖S_t‖ after each probe token, the Frobenius norm of the WKV state of all heads
                            (S_t = diag(w_t) S_t-1 + k_tᵀ v_t): how much the layer remembers, token by token
            token_shift     the learned token-shift μ of TimeMix's w, k, v, r, g and ChannelMix's k, r (the
                            share of the previous token each projection reads, mean over channels, before the
                            ddlerp LoRA)
            token_shift_dd  Finch's data-dependent token shift μ_□ + lora_□(.) of w, k, v, r, g at each probe
                            token (mean over channels): what ddlerp makes of μ, token by token"""
        x = self.ln0(self.wte(idx))
        T, H, K = idx.size(1), self.config.n_embd // self.config.head_size, self.config.head_size
        q = torch.tensor(self.QUANTILES, device=idx.device)
        decays, norms, mixes, dd = [], [], [], []
        for block in self.blocks:
            att, h = block.att, block.ln1(x)
            h_prev = token_shift(h)
            _, k, v, _, log_w = (t[0].float() for t in att.project(h, h_prev))   # (T, C) each
            w = torch.exp(log_w)                                                  # (T, C) decays w_t
            decays.append(torch.quantile(w.view(T, H, K).transpose(0, 1).reshape(H, T * K), q, dim=1).t())  # (H, 5)
            # S_t = diag(w_t) S_t-1 + k_tᵀ v_t, token by token (the outputs r_t·(...) are not needed here)
            kv = k.view(T, H, K, 1) * v.view(T, H, 1, K)                          # (T, H, K, K)
            decay = w.view(T, H, K, 1)
            S, norm = kv.new_zeros(H, K, K), kv.new_empty(T)
            for t in range(T):
                S = torch.addcmul(kv[t], decay[t], S)
                norm[t] = torch.linalg.vector_norm(S)
            norms.append(norm)
            mixes.append(torch.cat([att.maa_wkvrg.view(5, -1).mean(1),
                                    torch.stack([block.ffn.maa_k.mean(), block.ffn.maa_r.mean()])]))
            dd.append(att.ddlerp_mix(h, h_prev - h)[:, 0].float().mean(-1))       # (5, T)
            x = block(x)
        names = [f"layer {i}" for i in range(len(self.blocks))]
        shifts = [f"att {m}" for m in self.MIXES] + ["ffn k", "ffn r"]
        return [array("decay", torch.stack(decays), ["layer", "head", "quantile"], labels=names),
                array("state_norm", torch.stack(norms), ["layer", "token"], labels=names),
                array("token_shift", torch.stack(mixes), ["layer", "mix"], labels=names,
                      cells=[m for _ in names for m in shifts]),
                array("token_shift_dd", torch.stack(dd), ["layer", "mix", "token"], labels=names, digits=6)]

    # --- recurrent inference ------------------------------------------------------------------------
    def init_state(self, batch: int, device):
        C, dtype = self.config.n_embd, self.wte.weight.dtype
        H, K = C // self.config.head_size, self.config.head_size
        return [((torch.zeros(batch, C, device=device, dtype=dtype),
                  torch.zeros(batch, H, K, K, device=device, dtype=torch.float32)),
                 torch.zeros(batch, C, device=device, dtype=dtype)) for _ in self.blocks]

    def step(self, token, state):
        """token (B,) -> logits (B, vocab) and the new state; O(1) in the context length."""
        x = self.ln0(self.wte(token))
        new_state = []
        for block, s in zip(self.blocks, state):
            x, s = block.step(x, s)
            new_state.append(s)
        return self.head(self.ln_out(x)), new_state
