"""DiT: a Diffusion Transformer noise predictor (Peebles & Xie 2023), class-conditional, written for cockpit.

    tokens = PatchEmbed(x_t) + pos                      (p x p patches -> (B, N, D), N = (H/p)(W/p); fixed 2-D
                                                         sin-cos positions)
    c      = TimestepEmbed(t) + LabelEmbed(y)           (y = num_classes is the null class: classifier-free guidance)
    per block, adaLN-Zero (section 3.2):
        shift1, scale1, gate1, shift2, scale2, gate2 = Linear(SiLU(c))          (zero-initialised: blocks start
        x = x + gate1 * Attn(LN(x) * (1 + scale1) + shift1)                      as the identity)
        x = x + gate2 * MLP(LN(x) * (1 + scale2) + shift2)
    final  : LN(x) * (1 + scale) + shift -> Linear(D, p*p*C)  (zero-initialised) -> unpatchify -> (B, C, H, W)

DiT-S/2 is n_layer 12, n_embd 384, n_head 6, patch_size 2. The model predicts only the noise (no learned
variance): sampling uses DDPM's fixed variance or DDIM.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from trainers.diffusion import SCHEDULES, timestep_embedding
from trainers.models.contract import at_least, divisible, fraction, one_of, require, through_blocks


@dataclass
class Config:
    image_size: int = 32
    in_channels: int = 3
    num_classes: int = 10           # class ids 0..num_classes-1; num_classes itself is the null class
    patch_size: int = 2
    n_layer: int = 12
    n_head: int = 6
    n_embd: int = 384
    mlp_ratio: float = 4.0
    dropout: float = 0.0
    activation_checkpointing: bool = False  # recompute each block in backward (train.activation_checkpointing)
    # The DDPM process this network is trained for (read by the diffusion task, stored with checkpoints):
    num_timesteps: int = 1000
    schedule: str = "linear"        # linear | cosine beta schedule
    class_dropout: float = 0.1      # probability a training label is replaced by the null class

    def __post_init__(self):  # what the layers below need (trainers/models/contract.py, Config checks)
        at_least(self, 1, "image_size", "in_channels", "num_classes", "patch_size", "n_layer", "n_head", "n_embd")
        require(self.mlp_ratio > 0, self, "mlp_ratio", "must be greater than 0 (4.0 is DiT's)")
        fraction(self, "dropout", "class_dropout")
        at_least(self, 2, "num_timesteps")
        one_of(self, "schedule", SCHEDULES)
        divisible(self, "image_size", "patch_size", "the image is cut into patch_size x patch_size patches")
        divisible(self, "n_embd", "n_head", "each head attends over n_embd / n_head channels")
        require(self.n_embd % 4 == 0, self, "n_embd", "must be divisible by 4 (the 2-D sin-cos positions give a "
                f"quarter of the channels to each of sin and cos of rows and columns); use model.n_embd="
                f"{self.n_embd + 4 - self.n_embd % 4}")


def sincos_pos_embed_2d(dim: int, grid: int) -> torch.Tensor:
    """(grid*grid, dim) fixed positions: half the channels encode the row, half the column (MAE/DiT)."""
    assert dim % 4 == 0, f"n_embd {dim} must be divisible by 4 for 2-D sin-cos positions"
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim / 4))
    ys, xs = torch.meshgrid(torch.arange(grid, dtype=torch.float64), torch.arange(grid, dtype=torch.float64),
                            indexing="ij")

    def emb(pos):  # (grid*grid,) -> (grid*grid, dim/2)
        out = pos.reshape(-1, 1) * omega[None]
        return torch.cat([torch.sin(out), torch.cos(out)], dim=1)

    return torch.cat([emb(ys), emb(xs)], dim=1).float()


def modulate(x, shift, scale):
    """adaLN: LayerNorm output scaled and shifted per sample; (B, N, D) with (B, D) shift and scale."""
    return x * (1 + scale[:, None, :]) + shift[:, None, :]


class TimestepEmbedder(nn.Module):
    def __init__(self, dim: int, freq_dim: int = 256):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t):
        return self.mlp(timestep_embedding(t, self.freq_dim).to(self.mlp[0].weight.dtype))


class Attention(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        assert cfg.n_embd % cfg.n_head == 0, "n_embd must be divisible by n_head"
        self.qkv = nn.Linear(cfg.n_embd, 3 * cfg.n_embd)
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd)
        self.n_head, self.dropout = cfg.n_head, cfg.dropout

    def forward(self, x):
        q, k, v = rearrange(self.qkv(x), "b n (three h d) -> three b h n d", three=3, h=self.n_head)
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        return self.proj(rearrange(y, "b h n d -> b n (h d)"))  # bidirectional: every patch sees every patch


class MLP(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        hidden = int(cfg.n_embd * cfg.mlp_ratio)
        self.fc1 = nn.Linear(cfg.n_embd, hidden)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(hidden, cfg.n_embd)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x):
        return self.dropout(self.fc2(self.act(self.fc1(x))))


class Block(nn.Module):
    """DiT block with adaLN-Zero conditioning."""

    def __init__(self, cfg: Config):
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.n_embd, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(cfg)
        self.norm2 = nn.LayerNorm(cfg.n_embd, elementwise_affine=False, eps=1e-6)
        self.mlp = MLP(cfg)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(cfg.n_embd, 6 * cfg.n_embd))

    def forward(self, x, c):
        shift1, scale1, gate1, shift2, scale2, gate2 = self.adaLN_modulation(c).chunk(6, dim=1)
        x = x + gate1[:, None, :] * self.attn(modulate(self.norm1(x), shift1, scale1))
        x = x + gate2[:, None, :] * self.mlp(modulate(self.norm2(x), shift2, scale2))
        return x


class FinalLayer(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        self.norm = nn.LayerNorm(cfg.n_embd, elementwise_affine=False, eps=1e-6)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(cfg.n_embd, 2 * cfg.n_embd))
        self.linear = nn.Linear(cfg.n_embd, cfg.patch_size ** 2 * cfg.in_channels)

    def forward(self, x, c):
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(modulate(self.norm(x), shift, scale))


class Model(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        assert cfg.image_size % cfg.patch_size == 0, \
            f"image_size {cfg.image_size} must be divisible by patch_size {cfg.patch_size}"
        self.config = cfg
        self.grid = cfg.image_size // cfg.patch_size
        self.patch_embed = nn.Conv2d(cfg.in_channels, cfg.n_embd, cfg.patch_size, stride=cfg.patch_size)
        self.register_buffer("pos_embed", sincos_pos_embed_2d(cfg.n_embd, self.grid)[None], persistent=False)
        self.t_embedder = TimestepEmbedder(cfg.n_embd)
        self.y_embedder = nn.Embedding(cfg.num_classes + 1, cfg.n_embd)  # + 1: the null class
        self.blocks = nn.ModuleList([Block(cfg) for _ in range(cfg.n_layer)])
        self.final_layer = FinalLayer(cfg)
        self._init_weights()

    def _init_weights(self):
        """DiT's initialisation: Xavier linears, adaLN-Zero and the output layer at zero. One deviation: the
        class and timestep embeddings start at unit scale (DiT's code uses N(0, 0.02), tuned for 400K-step
        runs), so that the conditioning can steer the blocks within the few hundred steps of a CPU run."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        w = self.patch_embed.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.patch_embed.bias)
        nn.init.normal_(self.y_embedder.weight, std=1.0)
        for block in self.blocks:
            nn.init.zeros_(block.adaLN_modulation[-1].weight)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)
        for p in (*self.final_layer.adaLN_modulation[-1].parameters(), *self.final_layer.linear.parameters()):
            nn.init.zeros_(p)

    def forward(self, x, t, y):
        """x (B, C, H, W) noisy images, t (B,) timesteps, y (B,) class ids (num_classes: null) -> noise (B, C, H, W)"""
        p = self.config.patch_size
        h = rearrange(self.patch_embed(x), "b d gh gw -> b (gh gw) d") + self.pos_embed  # (B, N, D)
        c = self.t_embedder(t) + self.y_embedder(y)                                      # (B, D)
        h = through_blocks(self.blocks, h, c, checkpointed=self.config.activation_checkpointing and self.training)
        h = self.final_layer(h, c)                                                       # (B, N, p*p*C)
        return rearrange(h, "b (gh gw) (p1 p2 c) -> b c (gh p1) (gw p2)", gh=self.grid, p1=p, p2=p)
