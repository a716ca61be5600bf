"""U-Net noise predictor for DDPM (Ho et al. 2020), small, class- or text-conditional, written for cockpit.

    emb   = MLP(sinusoid(t)) + class_embedding[y]               (model.conditioning=class: y = num_classes is
                                                                 the null class, for classifier-free guidance,
                                                                 Ho & Salimans 2022)
    emb   = MLP(sinusoid(t)); ctx = TextEncoder(y)              (model.conditioning=text: y (B, L) caption byte
                                                                 tokens, all PAD the null caption;
                                                                 trainers/models/_text.py)
    h     = conv_in(x_t)
    down  : per level, num_res_blocks x ResBlock(h, emb) [+ self-attention at the lowest level, then (text)
            cross-attention to ctx], then a stride-2 conv; every block's output is kept as a skip connection
    mid   : ResBlock, self-attention, [cross-attention,] ResBlock (at the lowest resolution)
    up    : per level, (num_res_blocks + 1) x ResBlock(concat(h, skip), emb) [+ attentions], then 2x upsample
    eps   = conv_out(SiLU(GroupNorm(h)))                         (predicted noise, same shape as x_t)

ResBlock: GroupNorm -> SiLU -> conv3x3 -> GroupNorm * (1 + scale) + shift (FiLM from emb, "scale-shift norm" of
Nichol & Dhariwal 2021) -> SiLU -> dropout -> conv3x3 (zero-initialised) + skip. Channel widths are
base_channels * channel_mult[level]; channel_mult is a comma-separated string ("1,2,2") so presets can set it.
Cross-attention (Stable Diffusion's, at the attention resolutions): h = h + proj(CrossAttn(GroupNorm(h), ctx)),
proj zero-initialised, so the caption reaches the output through these layers alone.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from trainers.diffusion import SCHEDULES, timestep_embedding
from trainers.models._text import CrossAttention, TextConfig, text_encoder
from trainers.models.contract import at_least, fraction, one_of, require


@dataclass
class Config(TextConfig):  # conditioning: class (the default) | text, and the caption keys (_text.py)
    image_size: int = 16
    in_channels: int = 1
    num_classes: int = 10           # class ids 0..num_classes-1; num_classes itself is the null class
    base_channels: int = 64
    channel_mult: str = "1,2,2"     # width multiplier per resolution level; len - 1 downsamplings
    num_res_blocks: int = 2
    n_head: int = 4                 # heads of the self-attention at the lowest resolution
    dropout: float = 0.1
    # The DDPM process this network is trained for (read by the diffusion task, stored with checkpoints):
    num_timesteps: int = 1000
    schedule: str = "linear"        # linear | cosine beta schedule
    class_dropout: float = 0.1      # probability a training label is replaced by the null class
    latent: str = ""                # a vae run's checkpoint: train in its latent space (trainers/latent.py)

    @property
    def mults(self) -> list[int]:
        """channel_mult as numbers: [1, 2, 2]."""
        return [int(m) for m in str(self.channel_mult).split(",") if m.strip()]

    def __post_init__(self):  # what the layers below need (trainers/models/contract.py, Config checks)
        self.check_text()
        at_least(self, 1, "image_size", "in_channels", "num_classes", "base_channels", "num_res_blocks", "n_head")
        fraction(self, "dropout", "class_dropout")
        at_least(self, 2, "num_timesteps")
        one_of(self, "schedule", SCHEDULES)
        try:
            mults = self.mults
        except ValueError:
            mults = []
        require(bool(mults) and min(mults) >= 1, self, "channel_mult",
                "must be positive whole numbers separated by commas, one per resolution level, e.g. '1,2,2'")
        down = 2 ** (len(mults) - 1)
        require(self.image_size % down == 0, self, "image_size",
                f"must be divisible by {down}: model.channel_mult={self.channel_mult!r} halves it "
                f"{len(mults) - 1} times; use a multiple of {down} or fewer levels")
        lowest = self.base_channels * mults[-1]  # the width attention runs at
        require(lowest % self.n_head == 0, self, "n_head",
                f"must divide the {lowest} channels of the lowest level (model.base_channels x the last "
                "model.channel_mult), where self-attention runs")


def norm(ch: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(32, ch), ch)


def zero(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ResBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, emb_dim: int, dropout: float):
        super().__init__()
        self.norm1 = norm(c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.emb_proj = nn.Linear(emb_dim, 2 * c_out)            # -> (scale, shift)
        self.norm2 = norm(c_out)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = zero(nn.Conv2d(c_out, c_out, 3, padding=1))  # the block starts as the identity
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x, emb):
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb_proj(F.silu(emb))[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


class SelfAttention(nn.Module):
    """Multi-head self-attention over the H*W positions of a feature map, with a residual connection."""

    def __init__(self, ch: int, n_head: int):
        super().__init__()
        assert ch % n_head == 0, f"channels {ch} must be divisible by n_head {n_head}"
        self.norm = norm(ch)
        self.qkv = nn.Conv2d(ch, 3 * ch, 1)
        self.proj = zero(nn.Conv2d(ch, ch, 1))
        self.n_head = n_head

    def forward(self, x):
        B, C, H, W = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(B, 3, self.n_head, C // self.n_head, H * W).unbind(1)
        # (B, nh, hs, HW) -> (B, nh, HW, hs)
        y = F.scaled_dot_product_attention(q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2))
        y = y.transpose(-1, -2).reshape(B, C, H, W)
        return x + self.proj(y)


class SpatialCrossAttention(nn.Module):
    """The H*W positions of a feature map attend to the caption tokens, with a residual connection."""

    def __init__(self, ch: int, ctx_dim: int, n_head: int):
        super().__init__()
        self.norm = norm(ch)
        self.attn = CrossAttention(ch, ctx_dim, n_head)
        zero(self.attn.proj)  # starts as the identity: no caption effect until it is learned

    def forward(self, x, ctx, keep):
        B, C, H, W = x.shape
        y = self.attn(self.norm(x).flatten(2).transpose(1, 2), ctx, keep)   # (B, HW, C)
        return x + y.transpose(1, 2).reshape(B, C, H, W)


class Level(nn.Module):
    """One resolution of the encoder or decoder: res blocks, optional attention after each (and, for a
    text-conditioned net, cross-attention after that: ctx_dim is the caption tokens' width, 0 for none)."""

    def __init__(self, chans: list[tuple[int, int]], emb_dim: int, dropout: float, attn: bool, n_head: int,
                 ctx_dim: int = 0):
        super().__init__()
        self.blocks = nn.ModuleList([ResBlock(ci, co, emb_dim, dropout) for ci, co in chans])
        self.attns = nn.ModuleList([SelfAttention(co, n_head) if attn else nn.Identity() for _, co in chans])
        self.crosses = nn.ModuleList([SpatialCrossAttention(co, ctx_dim, n_head) for _, co in chans]
                                     if attn and ctx_dim else [])

    def run(self, h, emb, ctx, keep, skips: list | None = None, keep_skips: list | None = None):
        """Each block (its input concatenated with a popped skip when `skips` is given), then its attentions;
        every output appended to `keep_skips` when given."""
        for i, (block, attn) in enumerate(zip(self.blocks, self.attns)):
            h = attn(block(h if skips is None else torch.cat([h, skips.pop()], dim=1), emb))
            if self.crosses:
                h = self.crosses[i](h, ctx, keep)
            if keep_skips is not None:
                keep_skips.append(h)
        return h


class Model(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        self.config = cfg
        mult = cfg.mults  # checked by Config.__post_init__
        ch = cfg.base_channels
        emb_dim = 4 * ch
        self.time_mlp = nn.Sequential(nn.Linear(ch, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.text_conditioned = cfg.conditioning == "text"
        if self.text_conditioned:
            self.text = text_encoder(cfg)
        else:
            self.class_emb = nn.Embedding(cfg.num_classes + 1, emb_dim)  # + 1: the null class
        ctx_dim = cfg.text_embd if self.text_conditioned else 0
        self.conv_in = nn.Conv2d(cfg.in_channels, ch, 3, padding=1)

        widths = [ch * m for m in mult]
        lowest = len(mult) - 1
        self.down, self.downsample = nn.ModuleList(), nn.ModuleList()
        skips, c = [ch], ch
        for i, w in enumerate(widths):
            chans = []
            for _ in range(cfg.num_res_blocks):
                chans.append((c, w))
                c = w
                skips.append(c)
            self.down.append(Level(chans, emb_dim, cfg.dropout, i == lowest, cfg.n_head, ctx_dim))
            if i != lowest:
                self.downsample.append(nn.Conv2d(c, c, 3, stride=2, padding=1))
                skips.append(c)
        self.mid1 = ResBlock(c, c, emb_dim, cfg.dropout)
        self.mid_attn = SelfAttention(c, cfg.n_head)
        if self.text_conditioned:
            self.mid_cross = SpatialCrossAttention(c, ctx_dim, cfg.n_head)
        self.mid2 = ResBlock(c, c, emb_dim, cfg.dropout)
        self.up, self.upsample = nn.ModuleList(), nn.ModuleList()
        for i, w in reversed(list(enumerate(widths))):
            chans = []
            for _ in range(cfg.num_res_blocks + 1):
                chans.append((c + skips.pop(), w))
                c = w
            self.up.append(Level(chans, emb_dim, cfg.dropout, i == lowest, cfg.n_head, ctx_dim))
            if i != 0:
                self.upsample.append(nn.Conv2d(c, c, 3, padding=1))
        self.norm_out = norm(c)
        self.conv_out = zero(nn.Conv2d(c, cfg.in_channels, 3, padding=1))  # predicts 0 noise at init

    def forward(self, x, t, y):
        """x (B, C, H, W) noisy images, t (B,) timesteps, y (B,) class ids (num_classes: null) or, text-conditioned,
        (B, L) caption byte tokens (all PAD: the null caption) -> noise (B, C, H, W)"""
        t_freq = timestep_embedding(t, self.config.base_channels).to(self.conv_in.weight.dtype)
        emb = self.time_mlp(t_freq)
        if self.text_conditioned:
            ctx, keep = self.text(y)                                  # (B, S, E), (B, S)
        else:
            emb, ctx, keep = emb + self.class_emb(y), None, None
        h = self.conv_in(x)
        skips = [h]
        for i, level in enumerate(self.down):
            h = level.run(h, emb, ctx, keep, keep_skips=skips)
            if i < len(self.downsample):
                h = self.downsample[i](h)
                skips.append(h)
        h = self.mid_attn(self.mid1(h, emb))
        if self.text_conditioned:
            h = self.mid_cross(h, ctx, keep)
        h = self.mid2(h, emb)
        for i, level in enumerate(self.up):
            h = level.run(h, emb, ctx, keep, skips=skips)
            if i < len(self.upsample):
                h = self.upsample[i](F.interpolate(h, scale_factor=2.0, mode="nearest"))
        return self.conv_out(F.silu(self.norm_out(h)))
