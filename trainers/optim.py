"""train.optimizer=muon: Muon on the hidden matrices, AdamW on everything else, as the GPT-2 speedrun does.

Muon (Jordan et al. 2024, "MomentUm Orthogonalized by Newton-Schulz") runs SGD with Nesterov momentum and
replaces each 2-D update by the nearest semi-orthogonal matrix, U V^T of its SVD U S V^T, approximated by
five steps of the quintic Newton-Schulz iteration

    X <- X / ||X||_F;   5 times:  A = X X^T,  X <- a X + (b A + c A^2) X,   (a, b, c) = (3.4445, -4.7750, 2.0315)

whose coefficients trade exactness for speed: the singular values land in roughly [0.7, 1.2] instead of
exactly 1, which the speedrun found costs nothing.

This is a short Muon of its own rather than torch.optim.Muon (torch 2.13 has one, with the record's
coefficients, five steps, Nesterov momentum 0.95 and adjust_lr_fn="original", the record's
sqrt(max(1, rows / cols)) scale): the built-in always orthogonalises in bfloat16, and on a CPU the bfloat16
matmuls' rounding depends on the thread count, which the loop's ThreadGovernor changes under load, so a run
resumed from its checkpoint did not repeat its losses (1e-5 apart after a few steps, measured here; float32
repeats them exactly). Here Newton-Schulz runs in bfloat16 on CUDA, as the record, and in float32 elsewhere.
The momentum is the record's average (buf <- lerp(buf, g, 1 - mu); Nesterov: lerp(g, buf, mu)); torch's sum
(B <- mu B + g; g + mu B) differs by the factor (1 - mu) only, which the normalisation before Newton-Schulz
removes. Not reproduced: the record's momentum warm-up from 0.85 to 0.95 over its first 300 steps
(train.muon_momentum is constant).

Which parameters: Muon takes every 2-D parameter except the embedding tables (token, position and value
embeddings) and the output head, which AdamW takes with the 0-D/1-D ones (norm gains, biases, the speedrun's
mixing scalars), grouped by param_groups. AdamW's lr is the schedule's (train.lr); Muon's is
train.muon_lr, carried as the group's lr_scale (train.muon_lr / train.lr) so the loop's schedule moves both.
"""
from __future__ import annotations

import torch
import torch.nn as nn

# What a model marks on a parameter for the optimizer (read by param_groups):
NO_WEIGHT_DECAY = "_no_weight_decay"  # True: never decayed, whatever its shape (mamba_simple.py's attribute)
LR_SCALE = "_lr_scale"                # a float: this parameter's lr is the schedule's times it (RWKV-LM's lr_2x)


def param_groups(params, weight_decay: float, lr: float) -> list[dict]:
    """AdamW parameter groups: weight decay on tensors of 2 or more dimensions (nanoGPT), none on biases and
    norm gains, and none on a parameter marked `p._no_weight_decay = True` (Mamba's A_log and D, RWKV's LoRA
    matrices, minGPT's embeddings); a parameter marked `p._lr_scale = s` goes to a group whose `lr_scale` the
    loop multiplies into the schedule's lr (trainers/loop.py train_step). Groups: [decayed, not decayed] at
    scale 1 (the two groups every checkpoint had before any marks existed), then one per (scale, decay);
    empty groups are left out. Frozen parameters (requires_grad False) are not optimised."""
    buckets: dict[tuple[float, bool], list] = {}
    for p in params:
        if not p.requires_grad:
            continue
        decays = p.dim() >= 2 and not getattr(p, NO_WEIGHT_DECAY, False)
        buckets.setdefault((float(getattr(p, LR_SCALE, 1.0)), decays), []).append(p)
    keys = [(1.0, True), (1.0, False)] + sorted(k for k in buckets if k[0] != 1.0)
    groups = []
    for scale, decays in keys:
        if not buckets.get((scale, decays)):
            continue
        group = {"params": buckets[(scale, decays)], "weight_decay": weight_decay if decays else 0.0}
        if scale != 1.0:
            group.update(lr_scale=scale, lr=lr * scale)
        groups.append(group)
    return groups


def muon_split(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(hidden matrices for Muon, the rest for AdamW) among the trainable parameters."""
    adam_ids = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    head = getattr(model, "lm_head", None)
    if isinstance(head, nn.Linear):
        adam_ids.add(id(head.weight))
    seen, hidden, rest = set(), [], []
    for p in model.parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        (hidden if p.dim() == 2 and id(p) not in adam_ids else rest).append(p)
    return hidden, rest


def newton_schulz(G: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """U S' V^T with S' in about [0.7, 1.2], for G = U S V^T: the quintic iteration above (the record's
    zeropower_via_newtonschulz5), on the wide orientation so that X X^T is the smaller Gram matrix."""
    a, b, c = (3.4445, -4.7750, 2.0315)
    X = G.bfloat16() if G.is_cuda else G.float()
    tall = G.size(0) > G.size(1)
    if tall:
        X = X.T
    X = X / (X.norm() + 1e-7)  # spectral norm <= Frobenius norm = 1
    for _ in range(steps):
        A = X @ X.T
        B = b * A + c * A @ A
        X = a * X + B @ X
    return (X.T if tall else X).to(G.dtype)


class Muon(torch.optim.Optimizer):
    """SGD with Nesterov momentum whose 2-D update is orthogonalised by newton_schulz; decoupled weight decay;
    the step scaled by sqrt(max(1, rows / cols)) so tall and wide matrices move alike (the record's Muon)."""

    def __init__(self, params, lr: float = 0.02, momentum: float = 0.95, nesterov: bool = True,
                 ns_steps: int = 5, weight_decay: float = 0.0):
        super().__init__(params, dict(lr=lr, momentum=momentum, nesterov=nesterov, ns_steps=ns_steps,
                                      weight_decay=weight_decay))

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            mu = group["momentum"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                buf = self.state[p].setdefault("momentum_buffer", torch.zeros_like(p))
                buf.lerp_(p.grad, 1 - mu)
                g = p.grad.lerp(buf, mu) if group["nesterov"] else buf
                update = newton_schulz(g, group["ns_steps"])
                if group["weight_decay"]:
                    p.mul_(1 - group["lr"] * group["weight_decay"])
                p.add_(update, alpha=-group["lr"] * max(1.0, p.size(0) / p.size(1)) ** 0.5)


class MuonWithAdamW:
    """Muon and torch.optim.AdamW stepped as one optimizer: what the loop uses of an optimizer
    (param_groups, whose `lr` it sets each step, step, zero_grad, state, state_dict, load_state_dict)."""

    def __init__(self, muon: torch.optim.Optimizer, adamw: torch.optim.Optimizer):
        self.muon, self.adamw = muon, adamw

    @property
    def param_groups(self) -> list[dict]:
        return self.muon.param_groups + self.adamw.param_groups

    @property
    def state(self) -> dict:
        return {**self.muon.state, **self.adamw.state}

    def step(self):
        self.muon.step()
        self.adamw.step()

    def zero_grad(self, set_to_none: bool = True):
        self.muon.zero_grad(set_to_none=set_to_none)
        self.adamw.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        return {"muon": self.muon.state_dict(), "adamw": self.adamw.state_dict()}

    def load_state_dict(self, state: dict):
        if not isinstance(state, dict) or set(state) != {"muon", "adamw"}:
            raise KeyError("not a Muon + AdamW optimizer state (train.optimizer=muon)")
        self.muon.load_state_dict(state["muon"])
        self.adamw.load_state_dict(state["adamw"])


def muon_with_adamw(model: nn.Module, t: dict, fused: bool = False) -> MuonWithAdamW:
    """The optimizer of train.optimizer=muon from the run's `train` section."""
    hidden, rest = muon_split(model)
    scale = t["muon_lr"] / t["lr"] if t["lr"] > 0 else 1.0
    muon = Muon([{"params": hidden, "lr_scale": scale}], lr=t["muon_lr"], momentum=t["muon_momentum"],
                weight_decay=t["weight_decay"])
    adamw = torch.optim.AdamW(param_groups(rest, t["weight_decay"], t["lr"]), lr=t["lr"],
                              betas=(t["beta1"], t["beta2"]), **({"fused": True} if fused else {}))
    return MuonWithAdamW(muon, adamw)
