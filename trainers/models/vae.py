"""A small KL autoencoder after Stable Diffusion's AutoencoderKL (Rombach et al. 2022, "High-Resolution Image
Synthesis with Latent Diffusion Models"; CompVis/stable-diffusion ldm/models/autoencoder.py, ldm/modules/
diffusionmodules/model.py Encoder/Decoder, ldm/modules/distributions/distributions.py), scaled down.

    encoder : conv_in -> per level num_res_blocks x ResBlock, then a stride-2 Downsample (all but the last
              level) -> mid: ResBlock, [self-attention], ResBlock -> GroupNorm, SiLU, conv_out
              -> moments (B, 2 * latent_channels, H / f, W / f) = (mean, logvar)      f = 2^(levels - 1)
    posterior: q(z|x) = N(mean, diag(exp(logvar))), logvar clamped to [-30, 20] as SD's
              DiagonalGaussianDistribution does (exp stays finite in float32 at either end)
    z       = mean + exp(logvar / 2) * noise,  noise ~ N(0, I)          (the reparameterisation trick)
    decoder : the mirror: conv_in -> mid -> per level (num_res_blocks + 1) x ResBlock, then nearest 2x Upsample
              + conv -> GroupNorm, SiLU, conv_out -> x_hat (B, C, H, W)

The objective is the negative ELBO, -log p(x) <= E_q[-log p(x|z)] + KL(q(z|x) || N(0, I)), with a Laplace
likelihood p(x|z) (its negative log is |x - x_hat| up to constants) and the KL scaled by beta = kl_weight:

    L   = mean |x - x_hat|  +  kl_weight * KL / (C * H * W)
    KL  = 1/2 * sum over latent dims of (mean^2 + exp(logvar) - 1 - logvar)        (per image, in nats)

SD's loss (ldm/modules/losses/contperceptual.py) sums |x - x_hat| over the pixels and the KL over the latent
dims; dividing both by C * H * W gives a per-pixel loss with the same balance, so kl_weight = 1e-6 means here
what it means in SD's configs: a nearly deterministic autoencoder whose latents stay near unit scale. SD adds
LPIPS and, after 50k steps, a patch discriminator to that; both need more (a pretrained VGG, the steps) than
these presets have (presets/vae.yaml says why). SD's 1x1 quant_conv / post_quant_conv map z_channels to
embed_dim; here the two are the same, so they are left out.

ResBlock (SD's ResnetBlock): GroupNorm -> SiLU -> conv3x3 -> GroupNorm -> SiLU -> dropout -> conv3x3, plus the
input (through a 1x1 conv when the width changes). Widths are base_channels * channel_mult[level].
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from trainers.models.contract import at_least, fraction, require

LOGVAR_RANGE = (-30.0, 20.0)  # SD's clamp of the posterior's log-variance


@dataclass
class Config:
    image_size: int = 32            # supplied by the task (the data's size)
    in_channels: int = 3            # supplied by the task (1 grey, 3 colour)
    base_channels: int = 64
    channel_mult: str = "1,2,2"     # width multiplier per level; len - 1 stride-2 downsamplings (x4 here)
    num_res_blocks: int = 2
    latent_channels: int = 4        # SD's z_channels / embed_dim
    mid_attention: bool = True      # self-attention between the mid ResBlocks of encoder and decoder
    dropout: float = 0.0
    kl_weight: float = 1e-6         # beta of the objective (SD's kl_weight)

    @property
    def mults(self) -> list[int]:
        """channel_mult as numbers: [1, 2, 2]."""
        return [int(m) for m in str(self.channel_mult).split(",") if m.strip()]

    @property
    def factor(self) -> int:
        """How much the encoder shrinks H and W: 2 per downsampling."""
        return 2 ** (len(self.mults) - 1)

    def __post_init__(self):  # what the layers below need (trainers/models/contract.py, Config checks)
        at_least(self, 1, "image_size", "in_channels", "base_channels", "num_res_blocks", "latent_channels")
        at_least(self, 0.0, "kl_weight")
        fraction(self, "dropout")
        try:
            mults = self.mults
        except ValueError:
            mults = []
        require(bool(mults) and min(mults) >= 1, self, "channel_mult",
                "must be positive whole numbers separated by commas, one per resolution level, e.g. '1,2,2'")
        require(self.image_size % self.factor == 0, self, "image_size",
                f"must be divisible by {self.factor}: model.channel_mult={self.channel_mult!r} halves it "
                f"{len(mults) - 1} times; use a multiple of {self.factor} or fewer levels")


def norm(ch: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(32, ch), ch, eps=1e-6)  # SD's Normalize: 32 groups, eps 1e-6


class ResBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, dropout: float):
        super().__init__()
        self.norm1 = norm(c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.norm2 = norm(c_out)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x):
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


class SelfAttention(nn.Module):
    """SD's AttnBlock: one head of attention over the H*W positions, with a residual connection."""

    def __init__(self, ch: int):
        super().__init__()
        self.norm = norm(ch)
        self.qkv = nn.Conv2d(ch, 3 * ch, 1)
        self.proj = nn.Conv2d(ch, ch, 1)

    def forward(self, x):
        B, C, H, W = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(B, 3, C, H * W).transpose(-1, -2).unbind(1)  # (B, HW, C) each
        y = F.scaled_dot_product_attention(q, k, v)                                            # (B, HW, C)
        return x + self.proj(y.transpose(-1, -2).reshape(B, C, H, W))


class Downsample(nn.Module):
    """Halve H and W: SD pads right and bottom by one, then a 3x3 conv of stride 2 without padding."""

    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, stride=2)

    def forward(self, x):
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Double H and W: nearest-neighbour, then a 3x3 conv."""

    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Mid(nn.Module):
    """ResBlock, self-attention (or none), ResBlock at the lowest resolution."""

    def __init__(self, ch: int, dropout: float, attention: bool):
        super().__init__()
        self.block1 = ResBlock(ch, ch, dropout)
        self.attn = SelfAttention(ch) if attention else nn.Identity()
        self.block2 = ResBlock(ch, ch, dropout)

    def forward(self, x):
        return self.block2(self.attn(self.block1(x)))


class Encoder(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        widths = [cfg.base_channels * m for m in cfg.mults]
        self.conv_in = nn.Conv2d(cfg.in_channels, widths[0], 3, padding=1)
        self.levels = nn.ModuleList()
        c = widths[0]
        for i, w in enumerate(widths):
            blocks = []
            for _ in range(cfg.num_res_blocks):
                blocks.append(ResBlock(c, w, cfg.dropout))
                c = w
            if i < len(widths) - 1:
                blocks.append(Downsample(c))
            self.levels.append(nn.Sequential(*blocks))
        self.mid = Mid(c, cfg.dropout, cfg.mid_attention)
        self.norm_out = norm(c)
        self.conv_out = nn.Conv2d(c, 2 * cfg.latent_channels, 3, padding=1)  # SD's double_z: mean and logvar

    def forward(self, x):
        h = self.conv_in(x)                                  # (B, base, H, W)
        for level in self.levels:
            h = level(h)                                     # ... (B, widths[-1], H / f, W / f)
        return self.conv_out(F.silu(self.norm_out(self.mid(h))))  # (B, 2 * latent, H / f, W / f)


class Decoder(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        widths = [cfg.base_channels * m for m in cfg.mults]
        c = widths[-1]
        self.conv_in = nn.Conv2d(cfg.latent_channels, c, 3, padding=1)
        self.mid = Mid(c, cfg.dropout, cfg.mid_attention)
        self.levels = nn.ModuleList()
        for i, w in reversed(list(enumerate(widths))):
            blocks = []
            for _ in range(cfg.num_res_blocks + 1):
                blocks.append(ResBlock(c, w, cfg.dropout))
                c = w
            if i > 0:
                blocks.append(Upsample(c))
            self.levels.append(nn.Sequential(*blocks))
        self.norm_out = norm(c)
        self.conv_out = nn.Conv2d(c, cfg.in_channels, 3, padding=1)

    def forward(self, z):
        h = self.mid(self.conv_in(z))                        # (B, widths[-1], h, w)
        for level in self.levels:
            h = level(h)                                     # ... (B, base, h * f, w * f)
        return self.conv_out(F.silu(self.norm_out(h)))       # (B, C, h * f, w * f)


def kl_divergence(mean: torch.Tensor, logvar: torch.Tensor, dims: tuple[int, ...] = (1, 2, 3)) -> torch.Tensor:
    """KL(N(mean, exp(logvar)) || N(0, I)) in nats, summed over `dims` (by default each image's latent dims:
    (B,)). KL = 1/2 * sum(mean^2 + exp(logvar) - 1 - logvar)."""
    mean, logvar = mean.float(), logvar.float()
    return 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).sum(dim=dims)


def vae_loss(x: torch.Tensor, x_hat: torch.Tensor, mean: torch.Tensor, logvar: torch.Tensor, kl_weight: float
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The negative ELBO with beta = kl_weight, per pixel value: (loss, reconstruction L1, KL per image), each
    a batch mean. L = mean |x - x_hat| + kl_weight * KL / (C * H * W)."""
    rec = (x.float() - x_hat.float()).abs().mean()
    kl = kl_divergence(mean, logvar).mean()
    return rec + kl_weight * kl / x[0].numel(), rec, kl


class Model(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        self.config = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)

    def encode(self, x):
        """x (B, C, H, W) in [-1, 1] -> the posterior's (mean, logvar), each (B, latent, H / f, W / f)."""
        mean, logvar = self.encoder(x).chunk(2, dim=1)
        return mean, logvar.clamp(*LOGVAR_RANGE)

    def decode(self, z):
        """z (B, latent, h, w) -> x_hat (B, C, h * f, w * f)."""
        return self.decoder(z)

    def forward(self, x, noise=None):
        """x (B, C, H, W) -> (x_hat, mean, logvar): decodes a sample of the posterior, z = mean + std * noise
        (noise (B, latent, H / f, W / f)), or its mean when noise is None."""
        mean, logvar = self.encode(x)
        z = mean if noise is None else mean + torch.exp(0.5 * logvar) * noise.to(mean.dtype)
        return self.decode(z), mean, logvar
