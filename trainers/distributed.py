"""Multi-process training under torchrun: DistributedDataParallel, gloo on CPU and NCCL on GPU.

`cockpit train PRESET --nproc N` (and `--rdzv ...` for several machines) starts
`python -m torch.distributed.run --nproc_per_node=N ... -m trainers ...`; every rank runs the same Trainer
(trainers/loop.py) and this module holds what makes the ranks agree:

- Data. The global batch of a step is the batch one process with `train.batch_size * N` would draw for that
  step; rank r trains on its rows [r*B, (r+1)*B) (`Task.rank_batch`). With DDP averaging the gradients, N
  ranks take exactly the steps of one process with N times the batch, and a run can be resumed with a
  different N (keeping the global batch) without changing a single sample.
- The log. Rank 0 alone writes events. The logged loss is the mean over ranks (`mean_over_ranks`, every
  step, which also keeps the non-finite check the same on every rank); step events carry `ranks`, each
  rank's own throughput and step time (`rank_stats`), and a `log` event at start names the ranks' hosts.
- Commands. Only rank 0 reads stdin (`init_distributed` points the other ranks' stdin at /dev/null). Commands
  and signals land in each rank's `inbox`; before every step (and every half second while paused)
  `sync_controls` turns the inboxes into the flags the loop acts on, identical on every rank: rank 0's
  pause/resume/sample/checkpoint and any rank's stop (torchrun forwards SIGINT/SIGTERM to every rank), so
  all ranks stop, pause and checkpoint at the same step.
- Checkpoints. Rank 0 writes ckpt.pt, the other ranks wait at a barrier, so no rank runs ahead of a
  checkpoint that is still being written; on resume every rank loads the same file (DDP then broadcasts
  rank 0's weights anyway).
"""
from __future__ import annotations

import os
import socket

import torch
import torch.distributed as dist


def init_distributed(cfg: dict, rank: int, world: int):
    """Join the process group torchrun set up (MASTER_ADDR/PORT, RANK, WORLD_SIZE in the environment)."""
    backend = "nccl" if cfg["device"] == "cuda" else "gloo"
    if backend == "nccl":
        local = int(os.environ.get("LOCAL_RANK", rank))
        torch.cuda.set_device(local % max(1, torch.cuda.device_count()))
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    if rank != 0:
        _detach_stdin()


def _detach_stdin():
    """torchrun's ranks inherit one stdin: only rank 0 may read the cockpit's commands from it."""
    try:
        fd = os.open(os.devnull, os.O_RDONLY)
        os.dup2(fd, 0)
        os.close(fd)
    except OSError:
        pass


def _device() -> torch.device:
    """Where collective tensors live: CUDA for NCCL, CPU for gloo."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def mean_over_ranks(value: float) -> float:
    """The mean of one float over all ranks (e.g. each rank's loss on its share of the global batch)."""
    t = torch.tensor([value], dtype=torch.float64, device=_device())
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return float(t.item()) / dist.get_world_size()


def rank_stats(units: float, seconds: float, steps: int) -> list[dict]:
    """Every rank's throughput over the last log window: [{rank, throughput, step_ms}] (same list on all)."""
    mine = torch.tensor([units, seconds, max(steps, 1)], dtype=torch.float64, device=_device())
    everyone = [torch.zeros_like(mine) for _ in range(dist.get_world_size())]
    dist.all_gather(everyone, mine)
    out = []
    for r, t in enumerate(everyone):
        u, s, n = t.tolist()
        out.append({"rank": r, "throughput": u / max(s, 1e-9), "step_ms": 1000.0 * s / n})
    return out


def describe(batch_size: int) -> dict:
    """The start-up `log` event's fields: message, and `ranks` = [{rank, host, pid}] (every rank takes part)."""
    me = {"rank": dist.get_rank(), "host": socket.gethostname(), "pid": os.getpid()}
    everyone: list = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, me)
    world, names = len(everyone), sorted({r["host"] for r in everyone})
    return {"message": f"DDP: {world} processes ({dist.get_backend()}) on {len(names)} host(s) "
                       f"({', '.join(names)}); global batch {batch_size} x {world} = {batch_size * world}",
            "ranks": everyone}


def sync_controls(inbox, agreed) -> None:
    """Agree on the commands before a step, so every rank takes the same branch at the same step.

    `inbox` is the Controls (trainers/loop.py) that stdin commands and signals write into, asynchronously;
    `agreed` is what the loop acts on, written here only, in the loop's thread. Agreed: pause/resume as
    rank 0's inbox has it (only rank 0 reads commands), sample and checkpoint when rank 0 received them
    (taken out of its inbox, so each is served once), stop once any rank received it (a signal may reach
    one rank first)."""
    rank0 = dist.get_rank() == 0
    mine = [inbox.stop.is_set(), rank0 and inbox.paused.is_set()]
    for name in ("checkpoint", "sample"):
        flag = getattr(inbox, name)
        taken = rank0 and flag.is_set()
        if taken:  # a command arriving right now either is in this one or stays for the next sync
            flag.clear()
        mine.append(taken)
    t = torch.tensor([float(x) for x in mine], device=_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    stop, paused, checkpoint, sample = (v > 0 for v in t.tolist())
    if stop:
        agreed.stop.set()
    if paused and not stop:
        agreed.paused.set()
    else:
        agreed.paused.clear()
    if checkpoint:
        agreed.checkpoint.set()
    if sample:
        while rank0 and inbox.prompts:  # samples are written by rank 0 alone: only it needs the prompts
            agreed.prompts.append(inbox.prompts.popleft())
        agreed.sample.set()


def barrier() -> None:
    if dist.get_backend() == "nccl":
        dist.barrier(device_ids=[torch.cuda.current_device()])
    else:
        dist.barrier()
