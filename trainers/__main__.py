"""`python -m trainers PRESET [k=v ...] --log FILE [--resume RUN_DIR|CKPT] [--progress] [--commands] [--check]`

The trainer subprocess. Exit codes: 0 completed or stopped (by `stop`, Ctrl-C or SIGTERM, in any phase,
however many times and whenever sent), 1 run failed, 2 bad input.

Everything that can be refused without reading the data or building the model is checked before a run
directory or a log file exists (check_start: the device, the model's Config, where the data comes from);
`--check` stops there. Signals are handled from the first line (trainers/controls.py): until the log starts,
one Ctrl-C or SIGTERM ends the start at once, with one line and nothing left behind (reading a large corpus
or building a large model can take a while); from then on a signal means "stop at the next step, with a
checkpoint".
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

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
    p.add_argument("--check", action="store_true",
                   help="check the preset, the model's shape, the device and the data, then exit (0: ready to "
                        "run, 2: bad input) without creating anything")
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


def check_start(cfg: dict) -> None:
    """Refuse (ConfigError) what would break the start of a run with `cfg`, before anything is written: a
    device this machine lacks, then what the task needs (trainers/tasks Task.check: the model's contract and
    Config, where the data comes from)."""
    import torch

    from trainers.config import ConfigError
    from trainers.tasks import check_task

    if cfg["device"] == "cuda" and not torch.cuda.is_available():
        why = "this torch was built without CUDA" if torch.version.cuda is None else "no CUDA device is visible"
        raise ConfigError(f"device=cuda, but {why} (torch {torch.__version__}); use device=cpu, or device=auto "
                          "to take a GPU where there is one")
    check_task(cfg)


def run(args, echo=None, controls: Controls | None = None) -> int:
    from trainers import config

    cfg = config.load(args.preset, args.overrides)
    if args.log:
        config.refuse_special(args.log, f"--log {args.log}", "give the path of a file for the event log")
    rank = int(os.environ.get("RANK", "0"))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    from trainers.loop import Trainer, prepare

    ckpt = log = None
    if args.resume:  # the checkpoint's config (with the new overrides) is the run's; reading it creates nothing
        cfg, log, ckpt = prepare(cfg, args.log, args.resume, args.overrides, rank=rank)
    check_start(cfg)
    if args.check:
        return 0
    if world > 1:
        from trainers.distributed import init_distributed

        init_distributed(cfg, rank, world)
    fresh = _absent(args.log)
    if not args.resume:  # claims a new run directory (without --log)
        cfg, log, _ = prepare(cfg, args.log, None, rank=rank)
        if not args.log and log:
            fresh = [Path(log).absolute(), Path(log).absolute().parent]
    controls = controls or Controls()
    controls.on_abandon(lambda: _remove_if_empty(log, fresh))  # a signal while starting leaves nothing either
    try:
        if args.progress and echo is None and rank == 0:
            from trainers.progress import Progress

            echo = Progress(sys.stdout)
        if args.commands:
            controls.read_stdin()
        trainer = Trainer(cfg, log, resume=ckpt, echo=echo, controls=controls, rank=rank, world_size=world)
    except BaseException:  # bad data, a failed build: leave no empty log or run directory behind
        _remove_if_empty(log, fresh)
        raise
    code = trainer.run()
    if world > 1:
        import torch.distributed as dist

        dist.destroy_process_group()
    return code


def _absent(log: str | None) -> list[Path]:
    """The log file and those of its directories that do not exist yet (this start would create them)."""
    if not log:
        return []
    p = Path(log).absolute()
    return [q for q in (p, *p.parents) if not q.exists()]


def _remove_if_empty(log: str | None, fresh: list[Path]) -> None:
    """Remove what this start created and left empty: the log file, then its directories, deepest first."""
    if not log:
        return
    for p in sorted(fresh, key=lambda q: len(q.parts), reverse=True):
        try:
            if p.is_dir() and not p.is_symlink():
                _remove_own_lock(p)
            if p.is_file() and not p.is_symlink() and p.stat().st_size == 0:
                p.unlink()
            elif p.is_dir() and not p.is_symlink():
                p.rmdir()  # only when empty
        except OSError:
            pass


def _remove_own_lock(run_dir: Path) -> None:
    """The lock file this process took in a run directory it created (and is abandoning)."""
    from trainers.events import LOCK_NAME

    lock = run_dir / LOCK_NAME
    try:
        holder = lock.read_text(encoding="utf-8", errors="replace").split("\n")[0] if lock.is_file() else None
        if holder in (str(os.getpid()), ""):  # ours, or ours not yet written (a signal just after it was made)
            lock.unlink()
    except OSError:
        pass


if __name__ == "__main__":
    code = main()
    if os.environ.get("WORLD_SIZE", "1") != "1":
        # A torchrun rank whose run has ended (log closed, checkpoint written, process group destroyed)
        # leaves without the interpreter's teardown: there, a C++ thread of the gloo backend could still be
        # joinable when its object is destroyed, and the rank then aborts (SIGABRT) after a clean run.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code or 0)
    sys.exit(code)
