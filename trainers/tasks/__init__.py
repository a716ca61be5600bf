"""Tasks: what a model learns and how it is scored. `trainers.tasks.<task>` defines `Task(Task)`.

The training loop (trainers/loop.py) is the same for every task; a task supplies data, the model, the
loss, evaluation and samples. Batches are a pure function of (split, step, micro-step, seed) so that a
resumed run sees exactly the batches an uninterrupted run would. Under DDP the loop asks for the global
batch (train.batch_size x ranks) by passing `batch_size`; without it a task draws train.batch_size rows.

`Task.check(cfg)` refuses, before anything is read, built or written, what would break the task's start:
the model's Config and contract, and where its data would come from (check_task, which the trainer runs
before it creates a run directory, and load_task).
"""
from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from pathlib import Path

import torch

from kernels import integrate
from trainers.config import ConfigError
from trainers.models import check_model
from trainers.optim import muon_with_adamw, param_groups


class Task(ABC):
    unit = "tokens"  # what `step` events count: "tokens" or "items"
    eval_at_start = False  # evaluate before the first step (the curve starts at the untrained loss)
    contract: type | None = None  # the kind of model it trains (trainers/models/contract.py)

    @classmethod
    def check(cls, cfg: dict) -> None:
        """Refuse (ConfigError naming the key) what would break this task's start, cheaply: nothing is read,
        built or written. Here the model (its contract, its `model.*` keys); tasks add their data's checks."""
        check_model(cfg["arch"], cfg["model"], contract=cls.contract, kernels=cfg.get("kernels", "torch"))

    def __init__(self, cfg: dict, device: torch.device, log=None, amp_dtype: torch.dtype | None = None):
        """`amp_dtype`: the autocast dtype of the run (None: float32), which eval and samples use too."""
        self.cfg = cfg
        self.device = device
        self.log = log or (lambda level, message: None)
        self.amp_dtype = amp_dtype
        integrate.tf32_matmuls(device)  # on CUDA, fp32 matmuls on TF32 tensor cores (nanoGPT's allow_tf32)

    # --- data --------------------------------------------------------------------------------------
    def generator(self, split: str, step: int, micro: int = 0) -> torch.Generator:
        """A CPU generator seeded by (seed, split, step, micro): batches replay exactly on resume."""
        g = torch.Generator()
        salt = {"train": 0, "val": 1, "test": 2, "sample": 3}.get(split, 4)
        g.manual_seed((self.cfg["train"]["seed"] * 1_000_003 + salt * 7_919 + step * 131 + micro) % (2**63))
        return g

    @abstractmethod
    def get_batch(self, split: str, step: int, micro: int = 0, batch_size: int | None = None):
        """The batch of (split, step, micro): `batch_size` rows (None: train.batch_size)."""
        ...

    def rank_batch(self, split: str, step: int, micro: int = 0, rank: int = 0, world: int = 1):
        """Rank `rank`'s share of the global batch under DDP (trainers/distributed.py): rows
        [rank*B, (rank+1)*B) of the batch one process with batch_size B*world draws for (split, step, micro).
        So N ranks see exactly the samples, and take exactly the steps, of one process with N times the batch."""
        if world == 1:
            return self.get_batch(split, step, micro)
        b = self.cfg["train"]["batch_size"]
        return take_rows(self.get_batch(split, step, micro, batch_size=b * world), rank * b, (rank + 1) * b)

    @abstractmethod
    def batch_units(self, batch) -> int:
        """Tokens (or items) in one micro-batch, for throughput."""
        ...

    # --- model -------------------------------------------------------------------------------------
    @abstractmethod
    def build_model(self) -> torch.nn.Module:
        ...

    @abstractmethod
    def loss(self, model, batch) -> torch.Tensor:
        ...

    def configure_optimizer(self, model) -> torch.optim.Optimizer:
        """AdamW over `param_groups`: nanoGPT's grouping (weight decay on matrices, none on biases and norms),
        with the exceptions a model marks on its parameters; train.optimizer=muon: trainers/optim.py."""
        t = self.cfg["train"]
        # the fused kernel updates every tensor in one pass: on the CPU profile ~2.5 ms of a ~75 ms step
        kw = {"fused": True} if self.device.type in ("cuda", "cpu") else {}
        if t.get("optimizer", "adamw") == "muon":  # Muon on the hidden matrices, AdamW on the rest
            return muon_with_adamw(model, t, fused=bool(kw))
        groups = param_groups(model.parameters(), t["weight_decay"], t["lr"])
        return torch.optim.AdamW(groups, lr=t["lr"], betas=(t["beta1"], t["beta2"]), **kw)

    def on_step(self, model, optimizer, step: int, lr: float) -> float:
        """Called before each optimizer step; may change the lr (the model's hook: BitNet's two-stage schedule)."""
        return model.on_step(optimizer, step, self.cfg["train"]["max_steps"], lr)

    def autocast(self):
        """The run's mixed precision, for eval and samples as for training steps."""
        if self.amp_dtype is None:
            return torch.autocast(self.device.type, enabled=False)
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    # --- reporting ---------------------------------------------------------------------------------
    @abstractmethod
    def evaluate(self, model, step: int, batch_size: int | None = None) -> dict:
        """Returns {"val_loss": float, "metrics": {...}} plus any extra event fields; eval batches have
        `batch_size` rows (None: train.batch_size)."""
        ...

    def skip_eval(self, step: int, batch_size: int | None = None):
        """On a DDP rank that does not evaluate: do what evaluate does to the task's data state (nothing,
        unless eval batches come from the training stream), so that every rank's data stays in step."""

    @torch.no_grad()
    def samples(self, model, step: int) -> list[dict]:
        """Sample event payloads: {"kind": "text", "text": ..., "prompt": ...} or images."""
        return []

    def internals(self, model, step: int) -> dict:
        """What the model does inside on the task's fixed probe input (called without gradients, in eval mode):
        the `internals` event's fields besides step and arch, {"arrays": [...], "probe": ..., "tokens": [...]}
        (trainers/internals.py). Without a probe: no arrays of the model's own (the loop still writes its
        gradient and update arrays)."""
        return {}

    def state_dict(self) -> dict:
        """What a checkpoint needs besides weights to rebuild this task (e.g. the tokenizer)."""
        return {}

    def load_state_dict(self, state: dict):
        """Restore what state_dict() saved that changes during a run (e.g. a data stream's position)."""

    def dataset_info(self) -> dict | None:
        """What run_start records of the data: {name, path, format, tokens per split, tokenizer, ...}."""
        return None

    def memory_fields(self, model, optimizer) -> dict:
        """Extra fields of the loop's `memory` event; a "totals" dict in it is merged into the totals."""
        return {}

    def on_end(self, model, run_dir: Path, status: str = "completed") -> list[str]:
        """When the run ends (rank 0, with a log): write any files it leaves besides ckpt.pt; their paths."""
        return []


def take_rows(batch, start: int, stop: int):
    """Rows [start, stop) of every batch-first tensor in a batch (a tensor, or tuples/lists/dicts of them)."""
    if isinstance(batch, torch.Tensor):
        return batch[start:stop] if batch.dim() > 0 else batch
    if isinstance(batch, dict):
        return {k: take_rows(v, start, stop) for k, v in batch.items()}
    if isinstance(batch, (tuple, list)):
        return type(batch)(take_rows(v, start, stop) for v in batch)
    return batch


def task_class(cfg: dict) -> type[Task]:
    name = cfg["task"]
    try:
        mod = importlib.import_module(f"trainers.tasks.{name}")
    except ModuleNotFoundError as e:
        if e.name == f"trainers.tasks.{name}":
            raise ConfigError(f"task '{name}' is not available; use lm, sort, diffusion, finetune or autoencoder") from None
        raise
    return mod.Task


def check_task(cfg: dict) -> None:
    """What the task of `cfg` needs, checked without reading or building anything (Task.check)."""
    task_class(cfg).check(cfg)


def load_task(cfg: dict, device, log=None, amp_dtype: torch.dtype | None = None) -> Task:
    cls = task_class(cfg)
    cls.check(cfg)
    return cls(cfg, device, log, amp_dtype)
