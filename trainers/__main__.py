"""`python -m trainers PRESET [k=v ...] --log FILE [--resume RUN_DIR|CKPT] [--progress] [--commands]`

The trainer subprocess. Exit codes: 0 completed or stopped (by `stop`, Ctrl-C or SIGTERM, however many
times and whenever sent), 1 run failed, 2 bad input.
"""
from __future__ import annotations

import os
import sys

from common.cli import BadInput, Parser, fail
from trainers.controls import Controls


def build_parser() -> Parser:
    p = Parser(prog="python -m trainers", description="Run one cockpit trainer.")
    p.add_argument("preset", help="preset name or YAML path")
    p.add_argument("overrides", nargs="*", default=[], help="dotted k=v overrides, e.g. train.max_steps=200")
    p.add_argument("--log", help="event log path (default runs/<preset>-<timestamp>/events.jsonl)")
    p.add_argument("--resume", help="run directory or checkpoint to resume from")
    p.add_argument("--progress", action="store_true", help="print one progress line per log interval")
    p.add_argument("--commands", action="store_true", help="read JSON-line commands from stdin")
    return p


def main(argv: list[str] | None = None, *, echo=None) -> int:
    controls = Controls()
    controls.install_signals()  # first: a signal in any phase stops the trainer (trainers/controls.py)
    try:
        args = build_parser().parse_intermixed_args(argv)
        return run(args, echo=echo, controls=controls)
    except BadInput as e:  # ConfigError too
        return fail(str(e))
    finally:
        controls.ended()


def run(args, echo=None, controls: Controls | None = None) -> int:
    from trainers import config

    cfg = config.load(args.preset, args.overrides)
    rank = int(os.environ.get("RANK", "0"))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        from trainers.distributed import init_distributed

        init_distributed(cfg, rank, world)
    from trainers.loop import Trainer, prepare

    cfg, log, ckpt = prepare(cfg, args.log, args.resume, args.overrides if args.resume else None, rank=rank)
    if args.progress and echo is None and rank == 0:
        from trainers.progress import Progress

        echo = Progress(sys.stdout)
    controls = controls or Controls()
    if args.commands:
        controls.read_stdin()
    trainer = Trainer(cfg, log, resume=ckpt, echo=echo, controls=controls, rank=rank, world_size=world)
    code = trainer.run()
    if world > 1:
        import torch.distributed as dist

        dist.destroy_process_group()
    return code


if __name__ == "__main__":
    sys.exit(main())
