"""PixArt-alpha's text-conditioned Diffusion Transformer (Chen et al. 2023, "PixArt-α: Fast Training of Diffusion
Transformer for Photorealistic Text-to-Image Synthesis"), written for cockpit after the reference's
diffusion/model/nets/PixArt.py and PixArt_blocks.py.

    tokens = PatchEmbed(x_t) + pos                  (p x p patches -> (B, N, D); fixed 2-D sin-cos positions)
    ctx    = CaptionProj(TextEncoder(y))            (B, S, D): y (B, L) caption byte tokens (trainers/models/
                                                     _text.py), an MLP to the width D as PixArt's y_proj
    temb   = TimestepEmbed(t)                       (B, D)
    adaLN-single (section 2.3): one modulation for all the blocks, computed once,
        t0 = Linear(SiLU(temb))                     (B, 6D)   (the shared t_block)
        per block i, with a learned offset table E_i (6, D) (scale_shift_table, initialised randn / sqrt(D)):
        shift1, scale1, gate1, shift2, scale2, gate2 = E_i + t0.view(B, 6, D)
    per block:
        x = x + gate1 * SelfAttn(LN(x) * (1 + scale1) + shift1)
        x = x + CrossAttn(x, ctx)                   (queries: the patches; keys, values: the caption tokens,
                                                     PAD masked; its output projection zero-initialised)
        x = x + gate2 * MLP(LN(x) * (1 + scale2) + shift2)
    final  : shift, scale = E_final (2, D) + temb;  Linear(LN(x) * (1 + scale) + shift) (zero-initialised)
             -> unpatchify -> (B, C, H, W) predicted noise

The caption reaches the output only through the cross-attentions (the modulation is the timestep's alone), and
classifier-free guidance drops it to the null caption (all PAD: only the text encoder's START token remains).
As in the reference the cross-attention reads x without a norm of its own. PixArt-XL/2 is n_layer 28, n_embd
1152, n_head 16, patch_size 2 (about 0.6B parameters) with a frozen T5-XXL as text encoder; it predicts the
noise only here (the reference also learns the variance).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
from einops import rearrange

from trainers.diffusion import SCHEDULES
from trainers.models._text import CrossAttention, TextConfig, text_encoder
from trainers.models.contract import at_least, divisible, fraction, one_of, require, through_blocks
from trainers.models.dit import MLP, Attention, TimestepEmbedder, modulate, sincos_pos_embed_2d


@dataclass
class Config(TextConfig):
    conditioning: str = "text"      # y is (B, text_len) caption byte tokens
    image_size: int = 32
    in_channels: int = 3
    patch_size: int = 2
    n_layer: int = 12
    n_head: int = 6
    n_embd: int = 384
    mlp_ratio: float = 4.0
    dropout: float = 0.0
    activation_checkpointing: bool = False  # recompute each block in backward (train.activation_checkpointing)
    latent: str = ""                # a vae run's checkpoint: train in its latent space (trainers/latent.py)
    # The DDPM process this network is trained for (read by the diffusion task, stored with checkpoints):
    num_timesteps: int = 1000
    schedule: str = "linear"        # linear | cosine beta schedule

    def __post_init__(self):  # what the layers below need (trainers/models/contract.py, Config checks)
        self.check_text()
        one_of(self, "conditioning", ("text",))
        at_least(self, 1, "image_size", "in_channels", "patch_size", "n_layer", "n_head", "n_embd")
        require(self.mlp_ratio > 0, self, "mlp_ratio", "must be greater than 0 (4.0 is PixArt's)")
        fraction(self, "dropout")
        at_least(self, 2, "num_timesteps")
        one_of(self, "schedule", SCHEDULES)
        divisible(self, "image_size", "patch_size", "the image is cut into patch_size x patch_size patches")
        divisible(self, "n_embd", "n_head", "each head attends over n_embd / n_head channels")
        require(self.n_embd % 4 == 0, self, "n_embd", "must be divisible by 4 (the 2-D sin-cos positions give a "
                f"quarter of the channels to each of sin and cos of rows and columns); use model.n_embd="
                f"{self.n_embd + 4 - self.n_embd % 4}")


class CaptionProjection(nn.Module):
    """PixArt's y_proj: the text encoder's width E to the model's D, Linear -> GELU(tanh) -> Linear."""

    def __init__(self, cfg: Config):
        super().__init__()
        self.fc1 = nn.Linear(cfg.text_embd, cfg.n_embd)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(cfg.n_embd, cfg.n_embd)

    def forward(self, ctx):
        return self.fc2(self.act(self.fc1(ctx)))


class Block(nn.Module):
    """PixArt block: self-attention and MLP modulated by adaLN-single, cross-attention to the caption between."""

    def __init__(self, cfg: Config):
        super().__init__()
        D = cfg.n_embd
        self.norm1 = nn.LayerNorm(D, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(cfg)
        self.cross_attn = CrossAttention(D, D, cfg.n_head)
        self.norm2 = nn.LayerNorm(D, elementwise_affine=False, eps=1e-6)
        self.mlp = MLP(cfg)
        self.scale_shift_table = nn.Parameter(torch.randn(6, D) / D ** 0.5)

    def forward(self, x, t0, ctx, keep):
        """x (B, N, D), t0 (B, 6D) the shared modulation, ctx (B, S, D) caption tokens, keep (B, S) -> (B, N, D)"""
        B = x.shape[0]
        shift1, scale1, gate1, shift2, scale2, gate2 = (self.scale_shift_table[None] + t0.view(B, 6, -1)).unbind(1)
        x = x + gate1[:, None, :] * self.attn(modulate(self.norm1(x), shift1, scale1))
        x = x + self.cross_attn(x, ctx, keep)
        x = x + gate2[:, None, :] * self.mlp(modulate(self.norm2(x), shift2, scale2))
        return x


class FinalLayer(nn.Module):
    """PixArt's T2IFinalLayer: the timestep embedding plus its own (2, D) table shift and scale the last norm."""

    def __init__(self, cfg: Config):
        super().__init__()
        D = cfg.n_embd
        self.norm = nn.LayerNorm(D, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(D, cfg.patch_size ** 2 * cfg.in_channels)
        self.scale_shift_table = nn.Parameter(torch.randn(2, D) / D ** 0.5)

    def forward(self, x, temb):
        shift, scale = (self.scale_shift_table[None] + temb[:, None, :]).unbind(1)   # (B, D) each
        return self.linear(modulate(self.norm(x), shift, scale))


class Model(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        self.config = cfg
        D = cfg.n_embd
        self.grid = cfg.image_size // cfg.patch_size
        self.patch_embed = nn.Conv2d(cfg.in_channels, D, cfg.patch_size, stride=cfg.patch_size)
        self.register_buffer("pos_embed", sincos_pos_embed_2d(D, self.grid)[None], persistent=False)
        self.t_embedder = TimestepEmbedder(D)
        self.t_block = nn.Sequential(nn.SiLU(), nn.Linear(D, 6 * D))   # adaLN-single: shared by every block
        self.caption_proj = CaptionProjection(cfg)
        self.blocks = nn.ModuleList([Block(cfg) for _ in range(cfg.n_layer)])
        self.final_layer = FinalLayer(cfg)
        self._init_weights()
        self.text = text_encoder(cfg)   # initialises itself (a pretrained one keeps its weights)

    def _init_weights(self):
        """The reference's initialize_weights: Xavier linears with zero biases, the patch embedding as a linear,
        N(0, 0.02) for the timestep MLP and t_block, and zero for each block's cross-attention output projection
        and for the final linear (the net starts predicting 0 noise, and the caption's effect starts at 0).
        One deviation: the caption projection keeps its Xavier initialisation (the reference uses N(0, 0.02),
        tuned for T5 features and long runs), so that the caption tokens reach the cross-attentions at unit
        scale and steer the blocks within the few hundred steps of a CPU run (as DiT's class embedding here)."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        w = self.patch_embed.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.patch_embed.bias)
        for lin in (self.t_embedder.mlp[0], self.t_embedder.mlp[2], self.t_block[1]):
            nn.init.normal_(lin.weight, std=0.02)
        for block in self.blocks:
            nn.init.zeros_(block.cross_attn.proj.weight)
            nn.init.zeros_(block.cross_attn.proj.bias)
        nn.init.zeros_(self.final_layer.linear.weight)
        nn.init.zeros_(self.final_layer.linear.bias)

    def forward(self, x, t, y):
        """x (B, C, H, W) noisy images, t (B,) timesteps, y (B, L) caption byte tokens (all PAD: the null
        caption) -> noise (B, C, H, W)"""
        p = self.config.patch_size
        h = rearrange(self.patch_embed(x), "b d gh gw -> b (gh gw) d") + self.pos_embed  # (B, N, D)
        temb = self.t_embedder(t)                                                        # (B, D)
        t0 = self.t_block(temb)                                                          # (B, 6D)
        ctx, keep = self.text(y)                                                         # (B, S, E), (B, S)
        ctx = self.caption_proj(ctx)                                                     # (B, S, D)
        h = through_blocks(self.blocks, h, t0, ctx, keep,
                           checkpointed=self.config.activation_checkpointing and self.training)
        h = self.final_layer(h, temb)                                                    # (B, N, p*p*C)
        return rearrange(h, "b (gh gw) (p1 p2 c) -> b c (gh p1) (gw p2)", gh=self.grid, p1=p, p2=p)
