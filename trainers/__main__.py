"""`python -m trainers PRESET [k=v ...] --log FILE [--resume RUN_DIR|CKPT] [--progress] [--commands] [--check]`

The trainer subprocess. Exit codes: 0 completed or stopped, 1 run failed, 2 bad input, 128 + the signal's
number (130 Ctrl-C, 143 SIGTERM) when stopped while starting, before the first step (nothing to resume).

Everything that can be refused without reading the data or building the model is checked before a run
directory or a log file exists (check_start: the device, the model's Config, where the data comes from);
`--check` stops there. Until the trainer is built, one Ctrl-C or SIGTERM ends the start at once (reading a
large corpus or building a large model can take a while); from then on a signal means "stop at the next
step, with a checkpoint" (trainers/loop.py Controls).
"""
from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

from common.cli import BadInput, Parser, fail

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


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


class StartInterrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM while the trainer starts. A KeyboardInterrupt, so that no `except Exception` on the
    way (a loader turning any failure into a message) can swallow it."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _interrupt_start(signum, frame):
    for s in STOP_SIGNALS:  # the start ends now: a second Ctrl-C must not interrupt its one-line goodbye
        signal.signal(s, _ending)
    raise StartInterrupted(signum)


def _ending(signum, frame):
    """A signal while the trainer ends: nothing is left for it to stop."""


def main(argv: list[str] | None = None, *, echo=None) -> int:
    previous = {s: signal.getsignal(s) for s in STOP_SIGNALS}
    for s in STOP_SIGNALS:
        signal.signal(s, _interrupt_start)
    if hasattr(signal, "SIGHUP"):
        signal.signal(signal.SIGHUP, signal.SIG_IGN)  # an SSH drop must not kill the run (nor its start)
    try:
        args = build_parser().parse_intermixed_args(argv)
        return run(args, echo=echo)
    except BadInput as e:  # ConfigError too
        return fail(str(e))
    except KeyboardInterrupt as e:  # StartInterrupted; a bare one where SIGINT kept Python's own handler
        signum = getattr(e, "signum", signal.SIGINT)
        print(f"cockpit: stopped by {signal.Signals(signum).name} while starting, before the first step; "
              "nothing was trained", file=sys.stderr)
        return 128 + signum
    finally:
        for s, handler in previous.items():  # a run that started has its own handlers (Controls): kept
            if signal.getsignal(s) in (_interrupt_start, _ending):
                signal.signal(s, handler)


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


def run(args, echo=None) -> int:
    from trainers import config

    cfg = config.load(args.preset, args.overrides)
    if args.log:
        config.refuse_special(args.log, f"--log {args.log}", "give the path of a file for the event log")
    rank = int(os.environ.get("RANK", "0"))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    from trainers.loop import Controls, Trainer, check_log_writable, prepare

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
    try:
        if rank == 0:
            check_log_writable(log)
        if args.progress and echo is None and rank == 0:
            from trainers.progress import Progress

            echo = Progress(sys.stdout)
        controls = Controls()
        if args.commands:
            controls.read_stdin()
        trainer = Trainer(cfg, log, resume=ckpt, echo=echo, controls=controls, rank=rank, world_size=world)
        controls.install_signals()  # from here a signal means "stop at the next step", with a checkpoint
    except BaseException:  # bad data, a signal, a failed build: leave no empty log or run directory behind
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
            if p.is_file() and not p.is_symlink() and p.stat().st_size == 0:
                p.unlink()
            elif p.is_dir() and not p.is_symlink():
                p.rmdir()  # only when empty
        except OSError:
            pass


if __name__ == "__main__":
    code = main()
    for s in STOP_SIGNALS:  # the trainer is done: a signal now could only turn its exit into a traceback
        signal.signal(s, _ending)
    sys.exit(code)
