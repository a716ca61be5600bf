"""Internals: what a model does inside while it learns, as the small named arrays of an `internals` event
(common/events.py, docs/events.md).

Every `train.internals_interval` steps the loop (trainers/loop.py) measures, around that step's update,
    grad_norm      each layer's gradient norm (after clipping: what the optimizer was given)
    update_ratio   log10(‖ΔW‖ / ‖W‖) of each parameter tensor, ΔW the optimizer's update (lr times its step,
                   weight decay included) and W the weights before it; near -3 when the learning rate is right
                   (much higher: the weights churn; much lower: they hardly move); never below float32's
                   resolution (RATIO_FLOOR, about -6.9: a smaller update leaves the weights as they were)
with UpdateWatch, then asks the task for the model's own arrays on a fixed probe input (Task.internals), which
the model computes in its own file (`Model.internals`, next to the code it explains) with the helpers here:
causal attention maps, pooled to fit the event, and the logit lens.

Arrays are written as lists of floats, rounded where a few digits say everything, so that an event stays a
few tens of KiB at most.
"""
from __future__ import annotations

import math
import re

import torch
import torch.nn.functional as F

PROBE_TOKENS = 32          # tokens of a language model's probe window
MAP_BUDGET = 16_384        # numbers in one event's token-by-token maps (layers x heads x side x side)
LENS_POSITIONS = 4         # the logit lens looks at the probe's last positions
MAX_TENSORS = 48           # more parameter tensors than this: update ratios are grouped per layer
TOKEN_LABEL_MAX = 32       # characters of a token's label


def token_label(text: str) -> str:
    """A token as one short line of text for an axis: a newline as ⏎, a tab as ⇥, other control characters as
    their pictures (␀ ...)."""
    out = []
    for ch in text[:TOKEN_LABEL_MAX]:
        o = ord(ch)
        if ch == "\n":
            out.append("⏎")
        elif ch == "\t":
            out.append("⇥")
        elif o < 0x20:
            out.append(chr(0x2400 + o))
        elif o == 0x7F:
            out.append("␡")
        elif 0x80 <= o <= 0x9F:
            out.append("�")
        else:
            out.append(ch)
    return "".join(out)


def array(name: str, values, dims: list[str], *, labels: list[str] | None = None, cells: list[str] | None = None,
          lo: float | None = None, hi: float | None = None, digits: int | None = None) -> dict:
    """One Array record of an internals event: `values` (a tensor or nested lists) flattened row-major,
    rounded to `digits` decimals when given (attention weights need no more than 4)."""
    t = torch.as_tensor(values).detach().float().cpu()
    data = t.reshape(-1).tolist()
    if digits is not None:
        data = [round(x, digits) if math.isfinite(x) else x for x in data]
    out = {"name": name, "shape": list(t.shape) or [1], "data": data, "dims": dims}
    if labels is not None:
        out["labels"] = labels
    if cells is not None:
        out["cells"] = cells
    if lo is not None:
        out["lo"], out["hi"] = float(lo), float(hi)
    return out


def causal_attention(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """softmax(Q Kᵀ / sqrt(d) + causal mask) in float32: q, k (B, H, T, d) -> weights (B, H, T, T), each row
    summing to 1, zero above the diagonal (a query never reads a later token)."""
    T = q.size(-2)
    att = (q.float() @ k.float().transpose(-2, -1)) / math.sqrt(k.size(-1))
    mask = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
    return F.softmax(att.masked_fill(~mask, float("-inf")), dim=-1)


def bins(T: int, side: int, device=None) -> torch.Tensor:
    """(side, T) one-hot: token t belongs to bin floor(t * side / T) (equal runs of consecutive tokens)."""
    which = torch.arange(T, device=device) * side // T
    return F.one_hot(which, side).t().float()


def fitted_maps(maps: torch.Tensor, budget: int = MAP_BUDGET) -> torch.Tensor:
    """Token-by-token maps (L, H, T, T) within `budget` numbers: as they are when they fit, else pooled into
    equal bins of consecutive tokens (rows averaged over a query bin, columns summed over a key bin), so that
    an attention row still sums to 1 and the causal zeros above the diagonal stay zero."""
    L, H, T, _ = maps.shape
    side = min(T, math.isqrt(max(budget // (L * H), 1)))
    if side == T:
        return maps
    P = bins(T, side, maps.device)                              # (side, T)
    rows = P / P.sum(dim=1, keepdim=True)                       # mean over the queries of a bin
    return rows @ maps.float() @ P.t()                          # (L, H, side, side)


def attention_arrays(maps: list[torch.Tensor], name: str = "attention") -> dict:
    """The maps of each layer, (1, H, T, T) each, as one (layer, head, query, key) array."""
    stacked = fitted_maps(torch.cat(maps, dim=0))
    return array(name, stacked, ["layer", "head", "query", "key"], labels=[f"layer {i}" for i in range(len(maps))],
                 digits=4)


def logit_lens(residuals: list[torch.Tensor], finish, decode, vocab: int | None = None,
               last: int = LENS_POSITIONS) -> dict:
    """The logit lens (nostalgebraist 2020): each layer's residual stream (1, T, C) read out through the model's
    final norm and head (`finish`) at the probe's last `last` positions: the probability of the top next
    token, with the token as the cell's label. Early layers guess frequent tokens; the last one is the model."""
    probs, cells = [], []
    for x in residuals:
        logits = finish(x[:, -last:]).float()[0]                 # (P, V)
        if vocab is not None:
            logits = logits[:, :vocab]                          # padding rows are never predicted
        p, ids = F.softmax(logits, dim=-1).max(dim=-1)
        probs.append(p)
        cells += [token_label(t) for t in decode(ids.tolist())]
    return array("logit_lens", torch.stack(probs), ["layer", "position"],
                 labels=[f"layer {i}" for i in range(len(residuals))], cells=cells, digits=4)


# --- gradients and updates ---------------------------------------------------------------------------------

_INDEX = re.compile(r"^\d+$")


def layer_of(name: str) -> str:
    """The layer a parameter belongs to, from its name: `transformer.h.3.attn.c_attn.weight` -> `h.3`,
    `transformer.wte.weight` -> `wte`."""
    parts = name.split(".")
    for i, part in enumerate(parts):
        if _INDEX.match(part):
            return ".".join(parts[max(i - 1, 0):i + 1])
    return parts[-2] if len(parts) > 1 else parts[0]


# An update smaller than float32's resolution of the weights leaves them unchanged: the ratio's floor.
RATIO_FLOOR = math.log10(torch.finfo(torch.float32).eps)


def _log_ratio(update: float, before: float, after: float) -> float:
    """log10(‖ΔW‖ / ‖W‖), W the weights before the update, or after it for weights that were all zero (a
    zero-initialised bias: its first update is all of it, ratio 1); never below RATIO_FLOOR."""
    weights = before if before > 0 else after
    if update <= 0 or weights <= 0:
        return RATIO_FLOOR
    return max(math.log10(update / weights), RATIO_FLOOR)


class UpdateWatch:
    """One optimizer step watched: made after backward (and clipping), before optimizer.step(), it keeps each
    layer's gradient norm and a copy of the weights; arrays(), after the step, compares."""

    def __init__(self, model: torch.nn.Module):
        self.params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        self.before = [p.detach().float().clone() for _, p in self.params]
        sq: dict[str, float] = {}
        for n, p in self.params:
            layer = layer_of(n)
            g = 0.0 if p.grad is None else float(p.grad.detach().float().norm()) ** 2
            sq[layer] = sq.get(layer, 0.0) + g
        self.grad_sq = sq

    def arrays(self) -> list[dict]:
        layers = list(self.grad_sq)
        grad = array("grad_norm", [math.sqrt(self.grad_sq[k]) for k in layers], ["layer"], labels=layers)
        names, norms = [], []   # (‖ΔW‖, ‖W before‖, ‖W after‖) of each tensor
        for (n, p), old in zip(self.params, self.before):
            new = p.detach().float()
            names.append(n)
            norms.append((float((new - old).norm()), float(old.norm()), float(new.norm())))
        if len(names) > MAX_TENSORS:  # per layer: the norms of all its tensors together
            sq: dict[str, list[float]] = {}
            for n, norm in zip(names, norms):
                acc = sq.setdefault(layer_of(n), [0.0, 0.0, 0.0])
                for i, x in enumerate(norm):
                    acc[i] += x * x
            names = list(sq)
            norms = [tuple(math.sqrt(x) for x in sq[k]) for k in names]
        ratio = array("update_ratio", [_log_ratio(*norm) for norm in norms], ["param"],
                      labels=[n[-120:] for n in names], digits=3)
        return [grad, ratio]
