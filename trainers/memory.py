"""Measured activation memory: the bytes autograd saves for backward, attributed to the module that saved them.

`torch.autograd.graph.saved_tensors_hooks` sees every tensor packed for backward; forward pre/post hooks
on every module keep a stack of the module currently running, so each saved tensor is charged to the
innermost module, then rolled up to a "layer" (a block of a ModuleList, or a top-level module). Saved
tensors that share storage are counted once; parameters (weights saved by matmuls) are not activations.
"""
from __future__ import annotations

import re
from contextlib import contextmanager

import torch
import torch.nn as nn

_INDEXED = re.compile(r"^(.*?\.\d+)(\.|$)")


def layer_of(module_name: str) -> str:
    """Roll a module path up to its layer: 'transformer.h.3.attn.c_attn' -> 'transformer.h.3'."""
    if not module_name:
        return "(model)"  # saved by the top-level forward itself, e.g. the loss
    m = _INDEXED.match(module_name)
    return m.group(1) if m else module_name


class ActivationProbe:
    def __init__(self, model: nn.Module):
        self.model = model
        self.stack: list[str] = []
        self.layers: dict[str, int] = {}
        self.order: list[str] = []
        self.seen: set[tuple[int, int]] = set()
        self.held: list[torch.Tensor] = []  # meta tensors already counted, kept alive so their ids stay theirs
        self.total = 0
        self.param_ptrs = {p.untyped_storage().data_ptr() for p in model.parameters() if p.device.type != "meta"}
        self.param_ids = {id(p) for p in model.parameters()}

    def _pack(self, t: torch.Tensor):
        if t.device.type == "meta":  # estimates on the meta device: no storage to dedupe by
            if id(t) in self.param_ids or (t._base is not None and id(t._base) in self.param_ids):
                return t
            key, nbytes = (id(t), 0), t.numel() * t.element_size()
            if key not in self.seen:  # a graph thrown away (a .detach()) frees its tensors, and id() is reused
                self.held.append(t)
        else:
            try:
                storage = t.untyped_storage()
            except (RuntimeError, NotImplementedError):  # e.g. sparse or quantised tensors
                return t
            key, nbytes = (storage.data_ptr(), storage.nbytes()), storage.nbytes()
            if key[0] in self.param_ptrs:
                return t
        if key in self.seen:
            return t
        self.seen.add(key)
        layer = layer_of(self.stack[-1] if self.stack else "")
        if layer not in self.layers:
            self.layers[layer] = 0
            self.order.append(layer)
        self.layers[layer] += nbytes
        self.total += nbytes
        return t

    @contextmanager
    def capture(self):
        def enter(name):
            def hook(module, args):
                self.stack.append(name)
            return hook

        def leave(module, args, output):  # must return None: a returned value would replace the output
            if self.stack:
                self.stack.pop()

        handles = []
        for name, mod in self.model.named_modules():
            handles.append(mod.register_forward_pre_hook(enter(name)))
            handles.append(mod.register_forward_hook(leave))
        try:
            with torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t):
                yield self
        finally:
            for h in handles:
                h.remove()
            self.stack.clear()

    def table(self, param_bytes: dict[str, int]) -> list[dict]:
        names = list(self.order) + [n for n in param_bytes if n not in self.layers]
        return [{"name": n, "activation_bytes": self.layers.get(n, 0), "param_bytes": param_bytes.get(n, 0)}
                for n in names]


def param_bytes_by_layer(model: nn.Module) -> dict[str, int]:
    out: dict[str, int] = {}
    seen: set[int] = set()
    for name, p in model.named_parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        layer = layer_of(name.rsplit(".", 1)[0] if "." in name else "")
        out[layer] = out.get(layer, 0) + p.numel() * p.element_size()
    return out


def optimizer_bytes(optimizer) -> int:
    total = 0
    for state in optimizer.state.values():
        for v in state.values():
            if torch.is_tensor(v):
                total += v.numel() * v.element_size()
    return total


def totals(model: nn.Module, optimizer, activations: int, device) -> dict:
    params = sum(p.numel() * p.element_size() for p in {id(p): p for p in model.parameters()}.values())
    grads = sum(p.grad.numel() * p.grad.element_size() for p in model.parameters() if p.grad is not None)
    trainable = sum(p.numel() for p in {id(p): p for p in model.parameters() if p.requires_grad}.values())
    out = {"params": params, "grads": grads, "optimizer": optimizer_bytes(optimizer),
           "activations": activations, "peak_allocated": None, "trainable_params": trainable}
    if device.type == "cuda":
        out["peak_allocated"] = torch.cuda.max_memory_allocated(device)
        out["reserved"] = torch.cuda.memory_reserved(device)
    return out
