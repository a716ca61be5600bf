"""BitNet b1.58: a LLaMA-style transformer whose linear layers have ternary weights {-1, 0, +1} (Ma et al.
2024, "The Era of 1-bit LLMs: All Large Language Models are in 1.58 Bits"; training recipe from "The Era of
1-bit LLMs: Training Tips, Code and FAQ"), written for cockpit in plain PyTorch.

    x_0    = wte[idx]                                     (full precision embedding and head, as in the paper)
    x_l+1  = x_l + Attn(x_l);   x_l+1 = x_l+1 + SwiGLU(x_l+1)  (every projection is a BitLinear; the RMSNorm
                                                            before each block lives inside BitLinear)
    logits = RMSNorm(x_L) @ wte^T                         (weight tying)

BitLinear (y = x W^T with quantised x and W; latent full-precision W is what the optimizer updates):
    x̂     = RMSNorm(x)                                            (normalise before quantising)
    x_int = Clip(Round(x̂ · 127 / max|x̂|), -128, 127)            per token absmax, 8 bits; s_x = 127 / max|x̂|
    γ     = max(mean|W|, ε);   W_int = Clip(Round(W / γ), -1, 1)  absmean, ternary
    y     = (x_int W_intᵀ) · γ / s_x                              integer matmul, then one rescale
Straight-through estimator: the forward uses the rounded values, the backward passes the gradient through
Round/Clip unchanged, so dL/dW and dL/dx̂ reach the latent weights (scales are treated as constants).

Two-stage schedule (`on_step`): the learning rate drops to `stage2_lr_scale` of the loop's schedule at half
of training, and weight decay follows a cosine from its configured peak to 0 over the first half, then stays 0.

The quantisers and the training-mode BitLinear forward live with the fused kernel in kernels/bitlinear.py
(`weight_quant`, `activation_quant`, `bitlinear_ref`).
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from kernels import integrate
from kernels.bitlinear import activation_quant, bitlinear_ref, weight_quant
from kernels.integrate import RMSNorm
from kernels.rope import rope_pairs
from trainers.internals import array, attention_arrays, causal_attention, logit_lens
from trainers.models.contract import LanguageModelBase, at_least, divisible, fraction, head_and_loss, through_blocks


@dataclass
class Config:
    vocab_size: int = 65
    block_size: int = 256
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    ffn_hidden: int = 0             # SwiGLU hidden size; 0 -> 8/3 · n_embd rounded up to 32 (LLaMA)
    dropout: float = 0.0
    stage2_lr_scale: float = 0.5    # lr multiplier for the second half of training (two-stage schedule)
    activation_checkpointing: bool = False
    kernels: str = "torch"          # torch | triton (fused BitLinear, RMSNorm, SwiGLU, linear+cross-entropy)

    def __post_init__(self):  # what the layers below need (trainers/models/contract.py, Config checks)
        at_least(self, 1, "vocab_size", "block_size", "n_layer", "n_head", "n_embd")
        at_least(self, 0, "ffn_hidden", "stage2_lr_scale")
        fraction(self, "dropout")
        divisible(self, "n_embd", "n_head", "rotary positions turn pairs of each head's channels", times=2)


# ----------------------------------------------------------------------------------------------------
# BitLinear

class BitLinear(nn.Linear):
    """nn.Linear with latent fp weights, trained through ternary weights and 8-bit activations."""

    def __init__(self, in_features: int, out_features: int, fused: bool = False):
        super().__init__(in_features, out_features, bias=False)
        self.fused = fused

    def forward(self, x):
        if self.fused:  # int8 x ternary Triton matmul, same straight-through gradients
            return integrate.bitlinear(x, self.weight)
        return bitlinear_ref(x, self.weight)


class TernaryLinear(nn.Module):
    """An exported BitLinear: int8 weights in {-1, 0, 1} and one fp32 scale; no latent weights."""

    def __init__(self, layer: BitLinear):
        super().__init__()
        w_int, gamma = weight_quant(layer.weight.detach().float())
        self.register_buffer("w_int", w_int.to(torch.int8))
        self.register_buffer("gamma", gamma)

    def forward(self, x):
        x = F.rms_norm(x, (x.size(-1),), eps=1e-5)
        x_int, scale = activation_quant(x)
        # int8 × ternary accumulation; integer-valued fp32 is exact while |sum| < 2^24 (in_features < 132k)
        return F.linear(x_int, self.w_int.to(x_int.dtype)) * (self.gamma / scale)


# ----------------------------------------------------------------------------------------------------
# Model

class Attention(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        assert cfg.n_embd % cfg.n_head == 0, "n_embd must be divisible by n_head"
        fused = cfg.kernels == "triton"
        self.c_attn = BitLinear(cfg.n_embd, 3 * cfg.n_embd, fused)  # q, k, v in one matmul
        self.c_proj = BitLinear(cfg.n_embd, cfg.n_embd, fused)
        self.n_head, self.dropout = cfg.n_head, cfg.dropout
        self.rope = integrate.rope_pairs if fused else rope_pairs  # the fused kernel serves this layout

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.c_attn(x).view(B, T, 3, self.n_head, C // self.n_head).permute(2, 0, 3, 1, 4)
        pos = torch.arange(T, device=x.device)
        q, k = self.rope(q, pos), self.rope(k, pos)  # RoFormer rotary positions, interleaved pairs
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0,
                                           is_causal=True)
        return self.c_proj(y.transpose(1, 2).reshape(B, T, C))

    def attention_map(self, x):
        """x (B, T, C) -> the weights (B, nh, T, T) SDPA applies above, from the same rotated q and k."""
        B, T, C = x.shape
        q, k, _ = self.c_attn(x).view(B, T, 3, self.n_head, C // self.n_head).permute(2, 0, 3, 1, 4)
        pos = torch.arange(T, device=x.device)
        return causal_attention(self.rope(q, pos), self.rope(k, pos))


class SwiGLU(nn.Module):
    """FFN(x) = W_2 (SiLU(W_1 x) ⊙ W_3 x) (Shazeer 2020), with W_1 and W_3 in one BitLinear."""

    def __init__(self, cfg: Config):
        super().__init__()
        hidden = cfg.ffn_hidden or 32 * math.ceil(8 * cfg.n_embd / 3 / 32)
        self.fused = cfg.kernels == "triton"
        self.w13 = BitLinear(cfg.n_embd, 2 * hidden, self.fused)
        self.w2 = BitLinear(hidden, cfg.n_embd, self.fused)

    def forward(self, x):
        a, b = self.w13(x).chunk(2, dim=-1)
        if self.fused:
            return self.w2(integrate.swiglu(a, b))
        return self.w2(F.silu(a) * b)


class Block(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        self.attn = Attention(cfg)
        self.mlp = SwiGLU(cfg)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x):
        x = x + self.drop(self.attn(x))
        return x + self.drop(self.mlp(x))


class Model(LanguageModelBase):
    def __init__(self, cfg: Config):
        super().__init__()
        self.config = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList([Block(cfg) for _ in range(cfg.n_layer)])
        self.norm_f = RMSNorm(cfg.n_embd, fused=cfg.kernels == "triton")
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # weight tying
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(self, idx, targets=None):
        """idx (B, T) -> logits (B, T, vocab); loss is mean cross-entropy with negative targets ignored."""
        B, T = idx.shape
        assert T <= self.config.block_size, f"sequence of {T} tokens exceeds block_size {self.config.block_size}"
        x = self.drop(self.wte(idx))
        x = through_blocks(self.blocks, x, checkpointed=self.config.activation_checkpointing and self.training)
        x = self.norm_f(x)
        return head_and_loss(x, self.lm_head, targets, fused=self.config.kernels == "triton")

    def on_step(self, optimizer, step: int, max_steps: int, lr: float) -> float:
        """BitNet b1.58's two-stage schedule: lr drops at half-way; weight decay cosine -> 0, then off."""
        half = max(max_steps // 2, 1)
        for group in optimizer.param_groups:
            peak = group.setdefault("bitnet_peak_weight_decay", group["weight_decay"])
            group["weight_decay"] = peak * 0.5 * (1 + math.cos(math.pi * step / half)) if step < half else 0.0
        return lr if step < half else lr * self.config.stage2_lr_scale

    W_RANGE = 2.0   # the histogram of W/γ spans ±W_RANGE (the rounding thresholds are at ±0.5)
    W_BINS = 40

    TOP_CHANNELS = 3  # outlier channels named per BitLinear

    @torch.no_grad()
    def internals(self, idx, decode):
        """On a probe idx (1, T): attention maps and the logit lens (trainers/internals.py); the ternary
        weights: the histogram of every BitLinear's latent W/γ (`w_over_gamma`, share of weights per bin; |W/γ|
        < 0.5 rounds to 0, beyond to ±1, so mass piling at ±0.5 is weights about to flip), and the share of each
        BitLinear's ternary weights that changed since the previous probe (`flip_share`, from the second probe on);
        and the outliers among the activations each BitLinear quantises (`act_outliers`, one row per BitLinear):
        the largest |x̂| of each channel over the probe, x̂ = RMSNorm(x) as the 8-bit absmax quantiser sees it,
        over the median |x̂| of all of them, for the TOP_CHANNELS largest channels (the channel index as the
        cell's label). One channel far above the rest takes the absmax scale 127 / max|x̂| for itself, and every
        other channel is left a few of the 256 levels."""
        x = self.wte(idx)
        maps, residuals, inputs = [], [], {}
        layers = {module: name for name, module in self.named_modules() if isinstance(module, BitLinear)}
        hooks = [m.register_forward_pre_hook(lambda m, args: inputs.setdefault(layers[m], args[0].detach()))
                 for m in layers]
        try:
            for block in self.blocks:
                maps.append(block.attn.attention_map(x))
                x = block(x)
                residuals.append(x)
        finally:
            for h in hooks:
                h.remove()
        outliers, channels = [], []
        for name in layers.values():
            xn = F.rms_norm(inputs[name][0].float(), (inputs[name].size(-1),), eps=1e-5)   # (T, C_in) x̂
            peak = xn.abs().amax(dim=0)                                         # (C_in,) each channel's absmax
            top = peak.topk(min(self.TOP_CHANNELS, peak.numel()))
            outliers.append(top.values / xn.abs().median().clamp_min(1e-12))
            channels += [str(c) for c in top.indices.tolist()]
        seen = getattr(self, "_probed_ternary", None)
        if seen is None:
            seen = self._probed_ternary = {}  # name -> the ternary weights at the previous probe (not saved)
        ratios, flips, names = [], [], []
        for name, module in self.named_modules():
            if isinstance(module, BitLinear):
                w = module.weight.detach().float()
                w_int, gamma = weight_quant(w)
                ratios.append((w / gamma).flatten())
                before = seen.get(name)
                if before is not None:
                    flips.append(float((w_int != before).float().mean()))
                    names.append(name)
                seen[name] = w_int.to(torch.int8)
        r = torch.cat(ratios).clamp(-self.W_RANGE, self.W_RANGE)
        hist = torch.histc(r, bins=self.W_BINS, min=-self.W_RANGE, max=self.W_RANGE) / r.numel()
        out = [attention_arrays(maps), logit_lens(residuals, lambda h: self.lm_head(self.norm_f(h)), decode),
               array("w_over_gamma", hist, ["bin"], lo=-self.W_RANGE, hi=self.W_RANGE, digits=5),
               array("act_outliers", torch.stack(outliers), ["linear", "rank"], labels=list(layers.values()),
                     cells=channels, digits=3)]
        if flips:  # from the second probe on
            out.append(array("flip_share", flips, ["layer"], labels=names, digits=5))
        return out

    def metrics(self) -> dict:
        """Fraction of ternary weights that are 0 (the paper's "feature filtering"), over all BitLinears."""
        zeros = total = 0
        for module in self.modules():
            if isinstance(module, BitLinear):
                w_int, _ = weight_quant(module.weight.detach())
                zeros += int((w_int == 0).sum())
                total += w_int.numel()
        return {"ternary_zero_frac": zeros / max(total, 1)}

    def export_ternary(self) -> "Model":
        """A copy whose BitLinears are TernaryLinear (int8 {-1, 0, 1} weights + one scale), for inference."""
        model = copy.deepcopy(self).eval()
        for module in list(model.modules()):
            for name, child in list(module.named_children()):
                if isinstance(child, BitLinear):
                    setattr(module, name, TernaryLinear(child))
        return model
