"""Caption conditioning for the text-to-image denoisers (arch pixart, and unet with model.conditioning=text): the
byte tokenizer, the small text encoder trained jointly with the denoiser, an optional frozen pretrained encoder,
and the cross-attention from image positions to caption tokens. Not an arch (the leading underscore).

    y     = encode_captions(captions, text_len)      UTF-8 bytes + 1, cut at text_len, padded with PAD = 0: (B, L)
                                                     the null caption (classifier-free guidance's drop) is all PAD
    ctx   = [START; ByteEmbed(y)] + pos              (B, 1 + L, E); the learned START token is always kept, so an
                                                     all-PAD caption still has one key to attend to
    per layer (pre-LN): ctx = ctx + SelfAttn(LN(ctx), keys = START and the caption's bytes)
                        ctx = ctx + MLP(LN(ctx))
    ctx   = LN(ctx)                              without a learned gain or bias: every token at unit scale
    cross-attention ("encoder-decoder attention", Vaswani et al. 2017 sec. 3.2.3; LDM's conditioning,
    Rombach et al. 2022 eq. 3): Attn(Q = x W_q, K = ctx W_k, V = ctx W_v) = softmax(Q K^T / sqrt(d) + M) V,
                        M = -inf at PAD keys

model.text_encoder=DIR swaps the byte encoder for a frozen Hugging Face encoder saved in a local directory (a
CLIP text model, a T5 encoder, a BERT ...): the byte tokens are decoded back to text, tokenized by the
directory's own tokenizer and encoded without gradients; a learned START token and a learned projection to
text_embd are all that train.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from trainers.config import ConfigError
from trainers.models.contract import at_least, divisible, fraction, one_of, require

PAD = 0            # token 0 pads a caption; byte b is token b + 1
VOCAB = 257
CONDITIONINGS = ("class", "text")


def encode_captions(captions: list[str], max_len: int) -> torch.Tensor:
    """Captions -> (B, max_len) int64 byte tokens: UTF-8 bytes + 1, cut at max_len bytes, padded with PAD."""
    out = torch.full((len(captions), max_len), PAD, dtype=torch.long)
    for i, text in enumerate(captions):
        data = text.encode("utf-8")[:max_len]
        if data:
            out[i, :len(data)] = torch.tensor(list(data), dtype=torch.long) + 1
    return out


def decode_captions(tokens: torch.Tensor) -> list[str]:
    """(B, L) byte tokens -> the captions (PAD dropped; a caption cut inside a character loses that character)."""
    rows = tokens.detach().cpu().tolist()
    return [bytes(t - 1 for t in row if t != PAD).decode("utf-8", errors="ignore") for row in rows]


@dataclass
class TextConfig:
    """The `model.*` keys of caption conditioning, shared by the denoisers that take captions."""
    conditioning: str = "class"     # class: y is a class id; text: y is (B, text_len) caption byte tokens
    text_len: int = 32              # caption bytes kept (longer captions are cut)
    text_layers: int = 2            # transformer layers of the byte text encoder
    text_embd: int = 128            # its width E
    text_heads: int = 4
    text_encoder: str = ""          # a local Hugging Face encoder directory: frozen, replaces the byte encoder
    caption_dropout: float = 0.1    # probability a training caption is replaced by the null (all-PAD) caption

    def check_text(self):
        one_of(self, "conditioning", CONDITIONINGS)
        at_least(self, 1, "text_len", "text_embd", "text_heads")
        at_least(self, 0, "text_layers")
        fraction(self, "caption_dropout")
        divisible(self, "text_embd", "text_heads", "each head attends over text_embd / text_heads channels")
        require(not self.text_encoder or Path(self.text_encoder).expanduser().is_dir(), self, "text_encoder",
                "must be a local directory holding a Hugging Face encoder and its tokenizer (save_pretrained); "
                "leave it empty to train the byte encoder")


class CrossAttention(nn.Module):
    """Queries from the image positions, keys and values from the caption tokens; PAD keys masked out.
    keep_weights: the last call's attention weights, averaged over heads, are kept in `weights` (B, N, S)."""

    def __init__(self, dim: int, ctx_dim: int, n_head: int):
        super().__init__()
        assert dim % n_head == 0, f"width {dim} must be divisible by n_head {n_head}"
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(ctx_dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)   # the caller zero-initialises it: the caption's effect starts at 0
        self.n_head = n_head
        self.keep_weights = False
        self.weights: torch.Tensor | None = None

    def forward(self, x, ctx, keep):
        """x (B, N, D) image positions, ctx (B, S, E) caption tokens, keep (B, S) bool (False: PAD) -> (B, N, D)"""
        q = rearrange(self.q(x), "b n (h d) -> b h n d", h=self.n_head)
        k, v = rearrange(self.kv(ctx), "b s (two h d) -> two b h s d", two=2, h=self.n_head)
        mask = keep[:, None, None, :]                                               # (B, 1, 1, S)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)                 # (B, h, N, d)
        if self.keep_weights:
            att = (q.float() @ k.float().transpose(-2, -1)) / math.sqrt(q.size(-1))
            self.weights = F.softmax(att.masked_fill(~mask, float("-inf")), dim=-1).mean(1)  # (B, N, S)
        return self.proj(rearrange(y, "b h n d -> b n (h d)"))


@torch.no_grad()
def cross_attention_map(net: nn.Module, x, t, y) -> torch.Tensor:
    """The attention weights of the net's last cross-attention (the last block's), averaged over heads:
    (B, positions, 1 + caption tokens); column 0 is START."""
    last = [m for m in net.modules() if isinstance(m, CrossAttention)][-1]
    last.keep_weights = True
    try:
        net(x, t, y)
    finally:
        last.keep_weights = False
    weights, last.weights = last.weights, None
    return weights


class TextLayer(nn.Module):
    """A pre-LN transformer layer over the caption, PAD keys masked (the caption is read both ways)."""

    def __init__(self, dim: int, n_head: int):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(approximate="tanh"), nn.Linear(4 * dim, dim))
        self.n_head = n_head

    def forward(self, x, keep):
        q, k, v = rearrange(self.qkv(self.ln1(x)), "b s (three h d) -> three b h s d", three=3, h=self.n_head)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=keep[:, None, None, :])
        x = x + self.proj(rearrange(y, "b h s d -> b s (h d)"))
        return x + self.mlp(self.ln2(x))


class ByteTextEncoder(nn.Module):
    """The small text encoder trained from scratch with the denoiser: y (B, L) -> (ctx (B, 1+L, E), keep (B, 1+L))."""

    def __init__(self, cfg: TextConfig):
        super().__init__()
        E = cfg.text_embd
        self.tok = nn.Embedding(VOCAB, E)        # N(0, 1), as are START and the positions: see below
        self.start = nn.Parameter(torch.randn(1, 1, E))
        self.pos = nn.Parameter(torch.randn(1, 1 + cfg.text_len, E))
        self.layers = nn.ModuleList([TextLayer(E, cfg.text_heads) for _ in range(cfg.text_layers)])
        self.norm = nn.LayerNorm(E, elementwise_affine=False)
        # Linears N(0, 0.02) as GPT-2's; the embeddings at unit scale, far above what the layers add at first.
        # (At GPT-2's 0.02 the layers' shared output soon outweighed them, and after the final LayerNorm every
        # token of every caption was nearly one vector: the denoiser had no caption to read.)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def forward(self, y):
        B, L = y.shape
        keep = torch.cat([torch.ones(B, 1, dtype=torch.bool, device=y.device), y != PAD], dim=1)   # (B, 1+L)
        x = torch.cat([self.start.expand(B, -1, -1), self.tok(y)], dim=1) + self.pos[:, :1 + L]      # (B, 1+L, E)
        for layer in self.layers:
            x = layer(x, keep)
        return self.norm(x), keep


class PretrainedTextEncoder(nn.Module):
    """A frozen Hugging Face encoder from a local directory (never downloaded): y (B, L) byte tokens ->
    (ctx (B, 1+S, E), keep (B, 1+S)), S the longest caption in the encoder's own tokens."""

    def __init__(self, cfg: TextConfig):
        super().__init__()
        from transformers import AutoModel, AutoTokenizer

        path = str(Path(cfg.text_encoder).expanduser())
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
            model = AutoModel.from_pretrained(path, local_files_only=True)
        except (OSError, ValueError, KeyError) as e:
            reason = (str(e).splitlines() or [type(e).__name__])[0]
            raise ConfigError(f"model.text_encoder={cfg.text_encoder}: cannot load a Hugging Face encoder ({reason}); "
                              "give a directory saved with save_pretrained (config.json, weights, tokenizer)") from None
        if self.tokenizer.pad_token is None:  # GPT-style tokenizers: any token will do, the mask hides it
            self.tokenizer.pad_token = self.tokenizer.eos_token or self.tokenizer.unk_token
        # T5/BART: the encoder half; CLIP: the text tower; an encoder-only model (BERT): itself
        self.encoder = model.get_encoder() if model.config.is_encoder_decoder else getattr(model, "text_model", model)
        self.encoder.requires_grad_(False).eval()
        hidden = getattr(model.config, "hidden_size", None) or model.config.text_config.hidden_size
        self.max_len = cfg.text_len
        self.start = nn.Parameter(torch.randn(1, 1, cfg.text_embd))
        self.proj = nn.Linear(hidden, cfg.text_embd)
        self.norm = nn.LayerNorm(cfg.text_embd, elementwise_affine=False)  # as the byte encoder's

    def train(self, mode: bool = True):
        super().train(mode)
        self.encoder.eval()  # frozen: its dropout stays off
        return self

    def forward(self, y):
        enc = self.tokenizer(decode_captions(y), padding=True, truncation=True, max_length=self.max_len,
                             return_tensors="pt")
        ids, mask = enc["input_ids"].to(y.device), enc["attention_mask"].to(y.device)
        with torch.no_grad():
            h = self.encoder(input_ids=ids, attention_mask=mask).last_hidden_state      # (B, S, H)
        B = y.shape[0]
        ctx = torch.cat([self.start.expand(B, -1, -1), self.proj(h.to(self.proj.weight.dtype))], dim=1)
        keep = torch.cat([torch.ones(B, 1, dtype=torch.bool, device=y.device), mask.bool()], dim=1)
        return self.norm(ctx), keep


def text_encoder(cfg: TextConfig) -> nn.Module:
    """The caption encoder a text-conditioned denoiser owns: the frozen pretrained one or the byte encoder."""
    return PretrainedTextEncoder(cfg) if cfg.text_encoder else ByteTextEncoder(cfg)
