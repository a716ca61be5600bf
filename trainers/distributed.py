"""Multi-process training under torchrun: DistributedDataParallel, gloo on CPU and NCCL on GPU.

Each rank draws its own batches (the batch for global step s on rank r is the single-process batch of
index s * world + r), gradients are averaged by DDP, rank 0 writes the log and the checkpoints.
"""
from __future__ import annotations

import torch
import torch.distributed as dist


def init_distributed(cfg: dict, rank: int, world: int):
    backend = "nccl" if cfg["device"] == "cuda" else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(rank % max(1, torch.cuda.device_count()))
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
