"""Tasks: what a model learns and how it is scored. `trainers.tasks.<task>` defines `Task(Task)`.

The training loop (trainers/loop.py) is the same for every task; a task supplies data, the model, the
loss, evaluation and samples. Batches are a pure function of (split, step, micro-step, seed) so that a
resumed run sees exactly the batches an uninterrupted run would.
"""
from __future__ import annotations

import importlib

import torch

from trainers.config import ConfigError


class Task:
    unit = "tokens"  # what `step` events count: "tokens" or "items"

    def __init__(self, cfg: dict, device: torch.device, log=None):
        self.cfg = cfg
        self.device = device
        self.log = log or (lambda level, message: None)

    # --- data --------------------------------------------------------------------------------------
    def generator(self, split: str, step: int, micro: int = 0) -> torch.Generator:
        """A CPU generator seeded by (seed, split, step, micro): batches replay exactly on resume."""
        g = torch.Generator()
        salt = {"train": 0, "val": 1, "test": 2, "sample": 3}.get(split, 4)
        g.manual_seed((self.cfg["train"]["seed"] * 1_000_003 + salt * 7_919 + step * 131 + micro) % (2**63))
        return g

    def get_batch(self, split: str, step: int, micro: int = 0):
        raise NotImplementedError

    def batch_units(self, batch) -> int:
        """Tokens (or items) in one micro-batch, for throughput."""
        raise NotImplementedError

    # --- model -------------------------------------------------------------------------------------
    def build_model(self) -> torch.nn.Module:
        raise NotImplementedError

    def loss(self, model, batch) -> torch.Tensor:
        raise NotImplementedError

    def configure_optimizer(self, model) -> torch.optim.Optimizer:
        """AdamW with nanoGPT's grouping: weight decay on matrices, none on biases and norms."""
        t = self.cfg["train"]
        params = [p for p in model.parameters() if p.requires_grad]
        decay = [p for p in params if p.dim() >= 2]
        no_decay = [p for p in params if p.dim() < 2]
        groups = [{"params": decay, "weight_decay": t["weight_decay"]},
                  {"params": no_decay, "weight_decay": 0.0}]
        kw = {}
        if self.device.type == "cuda":
            kw["fused"] = True
        return torch.optim.AdamW(groups, lr=t["lr"], betas=(t["beta1"], t["beta2"]), **kw)

    def on_step(self, model, optimizer, step: int, lr: float) -> float:
        """Called before each optimizer step; may change the lr (e.g. BitNet's two-stage schedule)."""
        return lr

    # --- reporting ---------------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, model, step: int) -> dict:
        """Returns {"val_loss": float, "metrics": {...}} plus any extra event fields."""
        raise NotImplementedError

    @torch.no_grad()
    def samples(self, model, step: int) -> list[dict]:
        """Sample event payloads: {"kind": "text", "text": ..., "prompt": ...} or images."""
        return []

    def state_dict(self) -> dict:
        """What a checkpoint needs besides weights to rebuild this task (e.g. the tokenizer)."""
        return {}


def load_task(cfg: dict, device, log=None) -> Task:
    name = cfg["task"]
    try:
        mod = importlib.import_module(f"trainers.tasks.{name}")
    except ModuleNotFoundError as e:
        if e.name == f"trainers.tasks.{name}":
            raise ConfigError(f"task '{name}' is not available; use lm, sort, diffusion or finetune") from None
        raise
    return mod.Task(cfg, device, log)
