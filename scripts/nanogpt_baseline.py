"""The baseline for bench_nanogpt.py: nanoGPT's character-level Shakespeare run, restated in one file.

nanoGPT is not a dependency and is never downloaded; this script re-states what its `train.py` and
`model.py` do for `config/train_shakespeare_char.py` with the CPU overrides from nanoGPT's README
(`--device=cpu --compile=False --eval_iters=20 --block_size=64 --batch_size=12 --n_layer=4 --n_head=4
--n_embd=128 --max_iters=2000 --lr_decay_iters=2000 --dropout=0.0`), so that both sides are timed on the
same machine in the same benchmark run:

- data: characters of the text, vocabulary = sorted set; first 90% train, last 10% val;
  get_batch = torch.randint(len(data) - block_size, (batch_size,)) windows from torch's global RNG;
- model: pre-norm GPT without biases, exact GELU, weight tying, N(0, 0.02) init with the residual
  projections at 0.02 / sqrt(2 n_layer); torch.manual_seed(1337) before it is built;
- AdamW (betas 0.9/0.99, weight decay 0.1 on matrices only), lr 1e-3 with 100 warm-up iterations,
  cosine to 1e-4 at 2000, grad clip 1.0; iterations 0..2000 inclusive, evaluating at every 250th
  before the update, on eval_iters fresh batches of each split; the first training batch is drawn before
  the first eval and each next one right after a forward.

With seed 1337 it prints best val 1.8857 on the 2-core dev machine: the 1.886 the issue gives for nanoGPT.

    python scripts/nanogpt_baseline.py --data ../shared/data/tinyshakespeare.txt [--seed 1337] [--json]
"""
from __future__ import annotations

import argparse
import json
import math
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

N_LAYER, N_HEAD, N_EMBD, BLOCK, BATCH = 4, 4, 128, 64, 12
LR, MIN_LR, WARMUP, MAX_ITERS, DECAY_ITERS = 1e-3, 1e-4, 100, 2000, 2000
WEIGHT_DECAY, BETAS, GRAD_CLIP, EVAL_INTERVAL = 0.1, (0.9, 0.99), 1.0, 250


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.ln_1 = nn.LayerNorm(N_EMBD, bias=False)
        self.c_attn = nn.Linear(N_EMBD, 3 * N_EMBD, bias=False)
        self.attn_proj = nn.Linear(N_EMBD, N_EMBD, bias=False)
        self.ln_2 = nn.LayerNorm(N_EMBD, bias=False)
        self.c_fc = nn.Linear(N_EMBD, 4 * N_EMBD, bias=False)
        self.mlp_proj = nn.Linear(4 * N_EMBD, N_EMBD, bias=False)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = (t.view(B, T, N_HEAD, C // N_HEAD).transpose(1, 2)
                   for t in self.c_attn(self.ln_1(x)).split(N_EMBD, dim=2))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B, T, C)
        x = x + self.attn_proj(y)
        return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x))))


class GPT(nn.Module):
    def __init__(self, vocab: int):
        super().__init__()
        # built in nanoGPT's order (wte, wpe, blocks, ln_f, lm_head): the same RNG draws, the same weights
        self.wte, self.wpe = nn.Embedding(vocab, N_EMBD), nn.Embedding(BLOCK, N_EMBD)
        self.blocks = nn.ModuleList(Block() for _ in range(N_LAYER))
        self.ln_f = nn.LayerNorm(N_EMBD, bias=False)
        self.lm_head = nn.Linear(N_EMBD, vocab, bias=False)
        self.wte.weight = self.lm_head.weight
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, mean=0.0, std=0.02)
        for name, p in self.named_parameters():
            if name.endswith("proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * N_LAYER))

    def forward(self, idx, targets):
        x = self.wte(idx) + self.wpe(torch.arange(idx.size(1)))
        for block in self.blocks:
            x = block(x)
        logits = self.lm_head(self.ln_f(x))
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))


def lr_at(it: int) -> float:
    if it < WARMUP:
        return LR * (it + 1) / (WARMUP + 1)
    if it > DECAY_ITERS:
        return MIN_LR
    coeff = 0.5 * (1.0 + math.cos(math.pi * (it - WARMUP) / (DECAY_ITERS - WARMUP)))
    return MIN_LR + coeff * (LR - MIN_LR)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--seed", type=int, default=1337)
    ap.add_argument("--eval-iters", type=int, default=20)
    ap.add_argument("--json", action="store_true", help="print one JSON line instead of nanoGPT-style lines")
    a = ap.parse_args()
    t_start = time.time()
    text = open(a.data, encoding="utf-8").read()
    stoi = {c: i for i, c in enumerate(sorted(set(text)))}
    ids = torch.tensor([stoi[c] for c in text], dtype=torch.long)
    n = int(len(ids) * 0.9)
    splits = {"train": ids[:n], "val": ids[n:]}

    def get_batch(split):
        data = splits[split]
        ix = torch.randint(len(data) - BLOCK, (BATCH,))
        return (torch.stack([data[i:i + BLOCK] for i in ix]), torch.stack([data[i + 1:i + 1 + BLOCK] for i in ix]))

    torch.manual_seed(a.seed)
    model = GPT(len(stoi))
    params = list(model.parameters())
    opt = torch.optim.AdamW([{"params": [p for p in params if p.dim() >= 2], "weight_decay": WEIGHT_DECAY},
                             {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}], lr=LR, betas=BETAS)

    @torch.no_grad()
    def estimate_loss():
        model.eval()
        out = {s: sum(model(*get_batch(s)).item() for _ in range(a.eval_iters)) / a.eval_iters
               for s in ("train", "val")}
        model.train()
        return out

    evals, best = [], float("inf")
    x, y = get_batch("train")
    t0 = time.time()
    for it in range(MAX_ITERS + 1):
        for g in opt.param_groups:
            g["lr"] = lr_at(it)
        if it % EVAL_INTERVAL == 0:
            losses = estimate_loss()
            best = min(best, losses["val"])
            evals.append({"step": it, "val_loss": losses["val"], "train_loss": losses["train"],
                          "time": time.time()})  # epoch seconds
            if not a.json:
                print(f"step {it}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}", flush=True)
        loss = model(x, y)
        x, y = get_batch("train")
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, GRAD_CLIP)
        opt.step()
        opt.zero_grad(set_to_none=True)
    result = {"seed": a.seed, "best_val_loss": best, "evals": evals, "loop_wall": time.time() - t0,
              "wall": time.time() - t_start}
    print(json.dumps(result) if a.json else f"best val loss {best:.4f}, {result['loop_wall']:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
