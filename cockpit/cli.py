"""The `cockpit` command (DESIGN.md "CLI contract"). Imports nothing heavy at start-up: no torch, no Textual
until a subcommand needs it.

    cockpit                               TUI: preset picker, then the run screen
    cockpit PRESET [k=v ...]              TUI, launching PRESET at once
    cockpit train PRESET [k=v ...] [--log FILE] [--headless] [--nproc N] [--resume RUN_DIR|CKPT]
    cockpit --replay FILE [FILE ...]      headless report of recorded runs (no TUI, no TTY needed)
    cockpit watch FILE                    TUI on a log that is still growing, or finished
    cockpit presets [--json]              list presets
    cockpit kernels [--json]              PyTorch vs Triton comparison
    cockpit runs [--json]                 the runs browser (or a JSON list of runs)

Exit codes: 0 success, 1 run failed, 2 bad input (one line `cockpit: error: ...`).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

USAGE = """usage: cockpit [PRESET [k=v ...]]
       cockpit train PRESET [k=v ...] [--log FILE] [--headless] [--nproc N] [--resume RUN_DIR|CKPT]
       cockpit --replay FILE [FILE ...] [--images]
       cockpit watch FILE
       cockpit presets [--json]
       cockpit kernels [--json]
       cockpit runs [--json]
       cockpit export-merged RUN_DIR|CKPT [--out FILE] [--hf DIR]"""


class BadInput(Exception):
    """Bad usage or input: printed as one `cockpit: error:` line, exit 2."""


class Parser(argparse.ArgumentParser):
    def error(self, message):
        raise BadInput(f"{message}; see `cockpit {self.prog.split()[-1]} --help`" if " " in self.prog
                       else f"{message}; see `cockpit --help`")


def fail(message: str, code: int = 2) -> int:
    print(f"cockpit: error: {message}", file=sys.stderr)
    return code


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return dispatch(argv)
    except BadInput as e:
        return fail(str(e))
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `cockpit --replay x | head`
        try:
            sys.stdout = open(os.devnull, "w")
        except OSError:
            pass
        return 0
    except Exception as e:  # bad input classes raised from deeper modules
        from common.reader import LogError

        try:
            from trainers.config import ConfigError
        except ImportError:  # pragma: no cover
            ConfigError = ValueError
        if isinstance(e, (LogError, ConfigError)):
            return fail(str(e))
        raise


def dispatch(argv: list[str]) -> int:
    if not argv:
        return tui()
    head = argv[0]
    if head in ("-h", "--help"):
        print(USAGE)
        return 0
    if head == "--replay" or "--replay" in argv:
        return replay(argv)
    if head == "train":
        return train(argv[1:])
    if head == "watch":
        p = Parser(prog="cockpit watch", add_help=True)
        p.add_argument("file")
        a = p.parse_args(argv[1:])
        from common.reader import check_log

        check_log(a.file)
        return tui(watch=a.file)
    if head == "presets":
        return presets(argv[1:])
    if head == "kernels":
        from cockpit.kernels_cmd import main as kernels_main

        return kernels_main(argv[1:])
    if head == "export-merged":
        from trainers.export_merged import main as export_main

        return export_main(argv[1:])
    if head == "runs":
        from cockpit.runs_cmd import main as runs_main

        return runs_main(argv[1:])
    if head.startswith("-"):
        raise BadInput(f"unknown option {head}")
    # cockpit PRESET [k=v ...]: validate before the UI opens
    from trainers import config

    cfg = config.load(head, argv[1:])
    return tui(preset=head, overrides=argv[1:], resolved=cfg)


def tui(**kwargs) -> int:
    if not sys.stdin.isatty() or not sys.stdout.isatty():
        raise BadInput("the cockpit UI needs a terminal; use `cockpit train PRESET --headless` or "
                       "`cockpit --replay FILE` without one")
    from cockpit.app import run_tui

    return run_tui(**kwargs)


def train(argv: list[str]) -> int:
    p = Parser(prog="cockpit train")
    p.add_argument("preset")
    p.add_argument("overrides", nargs="*")
    p.add_argument("--log")
    p.add_argument("--headless", action="store_true")
    p.add_argument("--nproc", type=int, default=1)
    p.add_argument("--resume")
    rdzv: list[str] = []
    if "--rdzv" in argv:  # everything after --rdzv goes to torchrun (multi-node rendezvous flags)
        i = argv.index("--rdzv")
        argv, rdzv = argv[:i], argv[i + 1:]
    a = p.parse_intermixed_args(argv)
    if a.nproc < 1:
        raise BadInput(f"--nproc {a.nproc} must be at least 1")
    from trainers import config

    config.load(a.preset, a.overrides)  # bad preset / override: exit 2 before anything starts
    headless = a.headless or not (sys.stdin.isatty() and sys.stdout.isatty())
    if not headless:
        return tui(preset=a.preset, overrides=a.overrides, log=a.log, resume=a.resume, nproc=a.nproc)
    targs = [a.preset, *a.overrides, "--progress"]
    if a.log:
        targs += ["--log", a.log]
    if a.resume:
        targs += ["--resume", a.resume]
    if a.nproc > 1 or rdzv:
        from cockpit.launch import torchrun_argv

        if not a.log and not a.resume:
            from common.paths import default_log_path

            targs += ["--log", str(default_log_path(a.preset.rsplit("/", 1)[-1].removesuffix(".yaml")))]
        return run_torchrun(torchrun_argv(a.nproc, targs, rdzv))
    from trainers.__main__ import main as trainer_main

    return trainer_main(targs)


def run_torchrun(argv: list[str]) -> int:
    """Run torchrun in the foreground. The terminal's Ctrl-C reaches torchrun itself (which forwards it to
    every rank: stop with a checkpoint), so cockpit ignores SIGINT meanwhile and forwards SIGTERM."""
    import signal
    import subprocess

    proc = subprocess.Popen(argv)
    old_int = signal.signal(signal.SIGINT, signal.SIG_IGN)
    old_term = signal.signal(signal.SIGTERM, lambda s, f: proc.send_signal(signal.SIGTERM))
    try:
        return proc.wait()
    finally:
        signal.signal(signal.SIGINT, old_int)
        signal.signal(signal.SIGTERM, old_term)


def replay(argv: list[str]) -> int:
    p = Parser(prog="cockpit --replay")
    p.add_argument("--replay", nargs="+", required=True, metavar="FILE")
    p.add_argument("--images", action="store_true", help="save image samples as PNG beside the log")
    p.add_argument("--color", choices=("auto", "always", "never"), default="auto")
    p.add_argument("--x", choices=("step", "tokens", "time"), default="step", help="x-axis of the loss chart")
    p.add_argument("--smooth", type=float, default=0.0, help="EMA smoothing in [0, 1) for train curves")
    a = p.parse_args(argv)
    if not 0.0 <= a.smooth < 1.0:
        raise BadInput(f"--smooth {a.smooth} must be in [0, 1)")
    from pathlib import Path

    from common.reader import ReadStats, check_log
    from cockpit.report import report
    from common.state import load_state

    color = None if a.color == "auto" else a.color == "always"
    paths = [check_log(f) for f in a.replay]
    loaded = []
    for path in paths:
        stats = ReadStats()
        loaded.append((str(path), load_state(path, stats), stats))
    if len(loaded) > 1:
        from cockpit.compare import compare_report

        sys.stdout.write(compare_report(loaded, color=color, x_axis=a.x, smoothing=a.smooth))
        return 0
    path, state, stats = loaded[0]
    images_dir = Path(path).parent if a.images else None
    sys.stdout.write(report(path, state, stats, color=color, images_dir=images_dir, x_axis=a.x,
                            smoothing=a.smooth))
    sys.stdout.flush()
    return 0


def presets(argv: list[str]) -> int:
    p = Parser(prog="cockpit presets")
    p.add_argument("--json", action="store_true")
    p.add_argument("--refresh", action="store_true", help="re-measure instead of using the cache")
    a = p.parse_args(argv)
    from cockpit.presets_info import preset_table, presets_info

    infos = presets_info(refresh=a.refresh)
    if a.json:
        for info in infos:
            print(json.dumps(info))
    else:
        print(preset_table(infos))
    return 0


if __name__ == "__main__":
    sys.exit(main())
