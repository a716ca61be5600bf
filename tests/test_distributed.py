"""Multi-process training (trainers/distributed.py): 2 CPU ranks under torchrun with gloo.

The promise: N ranks with train.batch_size=B train exactly like one process with batch N*B (same samples,
same losses), rank 0 writes one log with per-rank throughput, commands reach every rank at the same step,
checkpoints are consistent and a DDP run resumes exactly.
"""
from __future__ import annotations

import json
import multiprocessing
import os
import socket
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import TINY_GPT, cockpit, events_of, read_log, train_in_process

# fixed lr decay: a run stopped early and resumed follows the same schedule as an uninterrupted one
DDP_RUN = (*TINY_GPT, "train.log_interval=1", "train.eval_interval=4", "train.eval_iters=1",
           "train.lr_decay_steps=12", "train.warmup_steps=2", "train.sample_tokens=8",
           "train.sample_interval=0", "train.memory_interval=0", "train.checkpoint_interval=0")
PER_RANK_BATCH = 4


def _wait_for(log, pred, proc, timeout=120.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        proc.poll()
        if log.exists() and any(pred(e) for e in read_log(log)):
            return
        assert proc.returncode() is None, f"trainer exited early:\n{proc.out_path.read_text()[-3000:]}"
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting in {log}:\n{proc.out_path.read_text()[-3000:]}")


@pytest.mark.slow
def test_two_gloo_ranks_train_exactly_like_one_process_with_the_global_batch_through_stop_and_resume(tmp_path):
    from cockpit.trainer_proc import TrainerProcess

    run_dir = tmp_path / "ddp"
    log = run_dir / "events.jsonl"
    # 1) launched as the TUI launches it (torchrun, commands on stdin): pause, checkpoint while paused, stop
    proc = TrainerProcess("nanogpt", [*DDP_RUN, f"train.batch_size={PER_RANK_BATCH}", "train.max_steps=400"],
                          log, nproc=2).start()
    try:
        _wait_for(log, lambda e: e["type"] == "step", proc)
        assert proc.send("pause") is None
        _wait_for(log, lambda e: e["type"] == "log" and e.get("state") == "paused", proc)
        assert proc.send("checkpoint") is None
        _wait_for(log, lambda e: e["type"] == "checkpoint", proc)
        assert proc.send("stop") is None
        _wait_for(log, lambda e: e["type"] == "run_end", proc)
        assert proc.proc.wait(timeout=60) == 0, proc.out_path.read_text()[-3000:]
    finally:
        proc.kill()
        proc.close()
    first = read_log(log)
    end = [e for e in first if e["type"] == "run_end"]
    assert len(end) == 1 and end[0]["status"] == "stopped"
    stopped_at = end[0]["step"]
    assert 1 <= stopped_at < 400
    paused_at = next(e for e in first if e.get("state") == "paused")
    ckpts = [e for e in first if e["type"] == "checkpoint"]
    # rank 0 alone writes: one checkpoint per save (the paused one, then the one at stop), same step for all
    assert [(c["reason"], c["step"]) for c in ckpts] == [("command", stopped_at), ("stop", stopped_at)]
    assert f"paused at step {stopped_at}" == paused_at["message"]
    saved = torch.load(run_dir / "ckpt.pt", weights_only=True)
    assert saved["step"] == stopped_at and saved["world_size"] == 2

    # 2) resumed from the CLI, still 2 ranks, to 4 steps past the stop
    total = stopped_at + 4
    r = cockpit("train", "nanogpt", "--headless", "--nproc", "2", "--resume", str(run_dir),
                f"train.max_steps={total}", timeout=240)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    events = read_log(log)
    starts = [e for e in events if e["type"] == "run_start"]
    assert [s["world_size"] for s in starts] == [2, 2] and starts[1]["resumed_from"] == stopped_at
    assert len({s["run_id"] for s in starts}) == 1
    ddp_steps = {e["step"]: e for e in events if e["type"] == "step"}
    assert sorted(ddp_steps) == list(range(1, total + 1))
    for e in ddp_steps.values():
        assert [r["rank"] for r in e["ranks"]] == [0, 1]
        assert all(r["throughput"] > 0 and r["step_ms"] > 0 for r in e["ranks"])
        assert e["throughput"] == pytest.approx(sum(r["throughput"] for r in e["ranks"]), rel=0.5)
    hosts = [e for e in events if e["type"] == "log" and e["message"].startswith("DDP: 2 processes (gloo)")]
    assert len(hosts) == 2 and [r["rank"] for r in hosts[0]["ranks"]] == [0, 1]

    # 3) one process, batch 2*B, uninterrupted: the same losses step by step, the same eval
    single = tmp_path / "single" / "events.jsonl"
    assert train_in_process("nanogpt", *DDP_RUN, f"train.batch_size={2 * PER_RANK_BATCH}",
                            f"train.max_steps={total}", log=single) == 0
    one = {e["step"]: e for e in events_of(single, "step")}
    assert sorted(one) == sorted(ddp_steps)
    for s in one:
        assert ddp_steps[s]["loss"] == pytest.approx(one[s]["loss"], rel=1e-5, abs=1e-5), f"step {s}"
        assert ddp_steps[s]["tokens"] == one[s]["tokens"]
    ddp_eval = {e["step"]: e["val_loss"] for e in events if e["type"] == "eval"}
    one_eval = {e["step"]: e["val_loss"] for e in events_of(single, "eval")}
    assert set(one_eval) <= set(ddp_eval)
    for s in one_eval:
        assert ddp_eval[s] == pytest.approx(one_eval[s], rel=1e-5, abs=1e-5), f"eval at step {s}"


def test_each_rank_trains_on_its_rows_of_the_batch_one_process_would_draw():
    from trainers import config
    from trainers.tasks import load_task

    for preset in ("nanogpt", "mingpt-sort"):
        # two identical tasks: one as rank 2 of 3 with batch 3, one as a single process with batch 9
        # (the LM task draws from a stream, so each side makes the same sequence of calls)
        tasks = []
        for _ in range(2):
            cfg = config.load(preset, ["train.batch_size=3"], has_cuda=False)
            cfg["device"] = "cpu"
            tasks.append((cfg, load_task(cfg, torch.device("cpu"))))
        (cfg_r, ranked), (cfg_1, single) = tasks
        cfg_1["train"]["batch_size"] = 9
        for step in (7, 8):
            x3, y3 = ranked.rank_batch("train", step, 1, rank=2, world=3)
            x, y = single.get_batch("train", step, 1)
            assert x3.shape[0] == 3 and torch.equal(x3, x[6:9]) and torch.equal(y3, y[6:9])
        assert cfg_r["train"]["batch_size"] == 3  # the per-rank batch is left as it was


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _sync_worker(rank: int, port: int, script: list, out):
    """Two ranks call sync_controls with the inbox contents `script[i][rank]`; report what they agreed."""
    import torch.distributed as dist

    from trainers.distributed import sync_controls
    from trainers.loop import Controls

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    inbox, agreed = Controls(), Controls()
    seen = []
    for commands in script:
        for cmd in commands[rank]:
            inbox.command(json.dumps({"cmd": cmd}))
        sync_controls(inbox, agreed)
        seen.append({f: getattr(agreed, f).is_set() for f in ("stop", "paused", "checkpoint", "sample")})
        agreed.checkpoint.clear()  # served, as the loop does
        agreed.sample.clear()
    out.put((rank, seen))
    dist.destroy_process_group()


def test_ranks_agree_on_rank0_commands_and_on_a_stop_that_reached_any_rank():
    ctx = multiprocessing.get_context("fork")
    script = [
        (["pause", "checkpoint"], ["resume", "sample"]),  # rank 1's commands are not the cockpit's: ignored
        ([], []),                                         # still paused; the checkpoint was served once
        (["resume", "sample"], ["pause"]),
        ([], ["stop"]),                                   # SIGTERM reached rank 1 first
    ]
    out = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_sync_worker, args=(r, port, script, out)) for r in (0, 1)]
    for p in procs:
        p.start()
    results = dict(out.get(timeout=60) for _ in procs)
    for p in procs:
        p.join(timeout=30)
    assert results[0] == results[1]
    f = dict(stop=False, paused=False, checkpoint=False, sample=False)
    assert results[0] == [{**f, "paused": True, "checkpoint": True}, {**f, "paused": True},
                          {**f, "sample": True}, {**f, "stop": True}]


def test_without_a_log_only_rank_0_claims_a_run_directory(tmp_path, monkeypatch):
    """Every rank runs the same start-up: only rank 0 writes the log, so only rank 0 may create its directory
    (each rank claiming one left empty run directories beside the real one)."""
    from trainers import config
    from trainers.loop import prepare

    monkeypatch.setenv("COCKPIT_RUNS", str(tmp_path))
    cfg = config.load("nanogpt", [], has_cuda=False)
    assert prepare(cfg, None, None, rank=1)[1] is None
    assert list(tmp_path.iterdir()) == []
    log = Path(prepare(cfg, None, None, rank=0)[1])
    assert [p.name for p in tmp_path.iterdir()] == [log.parent.name] and log.name == "events.jsonl"
