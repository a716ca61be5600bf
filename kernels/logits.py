"""What a language model's head does with its logits, in PyTorch: the loss, the padded vocabulary, and RWKV's
L2Wrap. The fused classifier (kernels/fused_linear_ce.py) computes the same without building the logits;
both take their definitions from here.

    cross_entropy(logits, target, ignore_index=-1, l2wrap=0.0)
        mean cross-entropy of logits (..., V) against target (...), positions whose target is ignore_index
        skipped; l2wrap > 0 wraps the loss in L2Wrap.
    mask_padding(logits, vocab)
        the columns >= vocab set to -inf, in place: the rows a padded classifier adds for speed (nanoGPT pads
        GPT-2's 50,257 tokens to 50,304) get probability 0, so the loss is the unpadded one, their gradient
        is 0 and sampling never draws them.
    L2Wrap (RWKV-LM, RWKV-v5/src/model.py)
        the loss passes through unchanged; in backward, the largest logit of every position whose target
        counts also gets the gradient factor * max / positions, the gradient of factor/2 * max² per position,
        which keeps the logits from drifting upwards (the reference uses factor 1e-4). The incoming gradient
        scales it as it scales the loss, so under gradient accumulation it stays a mean over the batch (the
        reference ignores it, the same thing when nothing is accumulated).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def mask_padding(logits: torch.Tensor, vocab: int | None) -> torch.Tensor:
    """logits (..., V_padded) with columns >= vocab at -inf (in place); unchanged when vocab is None or V."""
    if vocab is not None and vocab < logits.size(-1):
        logits[..., vocab:] = float("-inf")
    return logits


class L2Wrap(torch.autograd.Function):
    @staticmethod
    def forward(ctx, loss, logits, target, ignore_index: int, factor: float):
        ctx.save_for_backward(logits, target)
        ctx.ignore_index, ctx.factor = ignore_index, factor
        return loss

    @staticmethod
    def backward(ctx, grad):
        logits, target = ctx.saved_tensors
        maxx, ids = logits.max(dim=-1, keepdim=True)                          # first maximum, as torch.max
        counts = (target != ctx.ignore_index).unsqueeze(-1).to(maxx.dtype)
        positions = logits.shape[:-1].numel()
        g = torch.zeros_like(logits).scatter_(-1, ids, maxx * counts * (ctx.factor / positions))
        return grad, g * grad.to(g.dtype), None, None, None


def cross_entropy(logits: torch.Tensor, target: torch.Tensor, ignore_index: int = -1,
                  l2wrap: float = 0.0) -> torch.Tensor:
    """Mean cross-entropy of logits (..., V) against target (...) (see the module docstring)."""
    loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), target.reshape(-1), ignore_index=ignore_index)
    return L2Wrap.apply(loss, logits, target, ignore_index, l2wrap) if l2wrap else loss
