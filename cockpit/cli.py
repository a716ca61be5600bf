"""The `cockpit` command (README "Use"; docs/ARCHITECTURE.md). Imports nothing heavy at start-up: no torch, no Textual
until a subcommand needs it, and a subcommand's module only when that subcommand runs.

    cockpit                               TUI: preset picker, then the run screen
    cockpit PRESET [k=v ...]              TUI, launching PRESET at once
    cockpit train PRESET [k=v ...] [--log FILE] [--headless] [--nproc N] [--resume RUN_DIR|CKPT] [--rdzv ...]
    cockpit --replay FILE [FILE ...]      headless report of recorded runs (no TUI, no TTY needed)
    cockpit watch FILE                    TUI on a log that is still growing, or finished (or a TensorBoard run)
    cockpit presets [--json] [--refresh]  list presets
    cockpit plan PRESET [k=v ...] [--vram GB] [--json]   the micro-batch that fits a card, and the memory
    cockpit kernels [--json] [--only NAME[,NAME]] ...   PyTorch vs Triton comparison
    cockpit runs [--json] [--dir DIR] [--sort KEY] [--reverse] [--filter QUERY]   the runs browser
    cockpit export-merged RUN_DIR|CKPT [--out FILE] [--hf DIR] [--peft DIR]   merge a LoRA / QLoRA fine-tune
    cockpit export RUN_DIR --tensorboard OUT   the run as TensorBoard event files (`tensorboard --logdir OUT`)
    cockpit data prepare|train-tokenizer|inspect ...   tokenise corpora into shards, train a BPE, inspect

Exit codes: 0 success, 1 run failed (or output that could not be written: a full disk, an encoding that cannot
show it; or a UI that failed), 2 bad input (one line `cockpit: error: ...`).
"""
from __future__ import annotations

import argparse
import codecs
import errno
import json
import sys
import textwrap
from typing import Callable, NamedTuple

from common.cli import STDOUT_CLOSED, BadInput, Parser, drop_stdout, fail, output_failed

USAGE = """cockpit [PRESET [k=v ...]]
       cockpit SUBCOMMAND [--help] ...
       cockpit --replay FILE [FILE ...] [--images [DIR]] [--color WHEN] [--x AXIS] [--smooth S]"""

DESCRIPTION = """A terminal cockpit for training runs.

  cockpit                   the preset picker, then the run screen
  cockpit PRESET [k=v ...]  the run screen, launching PRESET at once: a preset name (`cockpit presets`)
                            or a YAML file, with dotted overrides such as train.max_steps=200
  cockpit --replay FILE     a headless report of recorded runs, no terminal needed
                            (its options: `cockpit --replay --help`)"""

EPILOG = ("Exit codes: 0 success, 1 run failed or output that could not be written, 2 bad input (one line "
          "`cockpit: error: ...`).")


class Subcommand(NamedTuple):
    summary: str                               # its line in `cockpit --help`
    arguments: Callable[[Parser], None]        # adds its arguments to its parser
    run: Callable[[Parser, list[str]], int]    # parses argv with that parser, runs, returns the exit code


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Help columns wide enough for the subcommand names (argparse indents them past its own measure);
    option names in help text are never split at their hyphens."""

    def _split_lines(self, text, width):
        return textwrap.wrap(" ".join(text.split()), width, break_on_hyphens=False)

    def add_argument(self, action):
        super().add_argument(action)
        if action.help is not argparse.SUPPRESS:
            for sub in self._iter_indented_subactions(action):
                width = len(self._format_action_invocation(sub)) + self._current_indent
                self._action_max_length = max(self._action_max_length, width)


def build_parser(*configured: str) -> Parser:
    """The `cockpit` parser with one subparser per subcommand (prog `cockpit SUBCOMMAND`). Only the
    subcommands named in `configured` get their arguments: adding them imports the subcommand's module,
    which `cockpit --help` and the other subcommands do not need."""
    return _build(configured)[0]


def subcommand_parser(name: str) -> Parser:
    """The parser of `cockpit NAME`, with its arguments."""
    return _build((name,))[1][name]


def _build(configured) -> tuple[Parser, dict[str, Parser]]:
    parser = Parser(prog="cockpit", usage=USAGE, description=DESCRIPTION, epilog=EPILOG,
                    formatter_class=_Formatter)
    subparsers = parser.add_subparsers(prog="cockpit", title="subcommands", metavar="SUBCOMMAND",
                                       dest="command", help="see `cockpit SUBCOMMAND --help` for its options")
    for name, sub in SUBCOMMANDS.items():
        p = subparsers.add_parser(name, help=sub.summary, description=sub.summary, epilog=EPILOG,
                                  formatter_class=_Formatter)
        if name in configured:
            sub.arguments(p)
    return parser, subparsers.choices


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if sys.stdout is None:  # `cockpit ... >&-`: nowhere to write a report, a table or the UI
        return fail(STDOUT_CLOSED, 1)
    _print_file_names_as_they_are()
    try:
        code = dispatch(argv)
        sys.stdout.flush()  # a full disk shows here, while it can still be reported, not at exit
        return code
    except BadInput as e:  # usage, and the bad-input errors of deeper modules (ConfigError, LogError ...)
        return fail(str(e))
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `cockpit --replay x | head`: the reader has all it wanted
        drop_stdout()
        return 0
    except UnicodeEncodeError as e:  # PYTHONIOENCODING=ascii, or a terminal that is not UTF-8
        if e.encoding.replace("_", "-").lower() in ("utf-8", "utf8"):
            raise
        drop_stdout()
        return fail(f"the output's encoding ({e.encoding}) cannot show {e.object[e.start]!r}; use a "
                    "UTF-8 locale (LANG=C.UTF-8) or set PYTHONIOENCODING=utf-8", 1)
    except OSError as e:
        if e.filename is not None:  # a file being read or written failed (a full disk, an I/O error)
            return fail(f"{e.filename}: {e.strerror or e}", 1)
        if not _stdout_failed(e):
            raise
        return output_failed(e)


def _print_file_names_as_they_are() -> None:
    """A file name that is not valid UTF-8 (a run directory named in another encoding) prints as its own
    bytes, as `ls` prints it, instead of failing the whole report."""
    try:
        if codecs.lookup(sys.stdout.encoding).name == "utf-8" and sys.stdout.errors == "strict":
            sys.stdout.reconfigure(errors="surrogateescape")
    except (AttributeError, LookupError, TypeError, ValueError):  # a stdout that is not a text stream
        pass


def _stdout_failed(error: OSError) -> bool:
    """Whether `error` (one without a file name) came from writing stdout: stdout cannot flush either."""
    try:
        sys.stdout.flush()
    except OSError:
        return True
    return error.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO)


def dispatch(argv: list[str]) -> int:
    if not argv:
        return tui()
    head = argv[0]
    if head in SUBCOMMANDS:
        return SUBCOMMANDS[head].run(subcommand_parser(head), argv[1:])
    if "--replay" in argv:
        return replay(argv)
    if head.startswith("-"):
        build_parser().parse_args(argv)  # --help prints the overview and exits; other options are errors
        raise BadInput(f"unknown option {head}; see `cockpit --help`")
    # cockpit PRESET [k=v ...]: validate before the UI opens
    from trainers import config

    cfg = config.load(head, argv[1:])
    return tui(preset=head, overrides=argv[1:], resolved=cfg)


def tui(**kwargs) -> int:
    if not sys.stdin.isatty() or not sys.stdout.isatty():
        raise BadInput("the cockpit UI needs a terminal; use `cockpit train PRESET --headless` or "
                       "`cockpit --replay FILE` without one")
    encoding = getattr(sys.__stderr__, "encoding", None) or "ascii"   # what Textual draws through
    if codecs.lookup(encoding).name != "utf-8":
        raise BadInput(f"the cockpit UI draws with UTF-8 characters and this terminal's encoding is {encoding}; "
                       "use a UTF-8 locale (LANG=C.UTF-8) or set PYTHONIOENCODING=utf-8")
    # A preset to launch was checked by config.load; what only the trainer can check (the model's shape,
    # the device, the data) it refuses in its own process, and the run screen shows its line: asking a
    # second process first would cost the UI a torch import (~2 s) before its first frame.
    from cockpit.app import run_tui

    return run_tui(**kwargs)


def check_launch(preset: str, overrides: list[str], resume: str | None = None, log: str | None = None) -> None:
    """What the trainer refuses before it creates a run (the model's shape, the device, the data), asked of
    `python -m trainers --check` in a subprocess, so that torch stays out of this process; BadInput with
    its line when it refuses."""
    import subprocess

    argv = [sys.executable, "-m", "trainers", preset, *overrides, "--check"]
    argv += (["--resume", resume] if resume else []) + (["--log", log] if log else [])
    r = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL, check=False)
    if r.returncode == 2:
        line = (r.stderr.strip().splitlines() or ["the trainer refused the run"])[-1]
        raise BadInput(line.removeprefix("cockpit: error: "))


def train_arguments(p: Parser) -> None:
    p.add_argument("preset", metavar="PRESET", help="a preset name (`cockpit presets`) or a YAML file")
    p.add_argument("overrides", nargs="*", default=[], metavar="k=v",
                   help="dotted preset keys to override, e.g. train.max_steps=200 model.n_layer=2")
    p.add_argument("--log", metavar="FILE",
                   help="the event log to write (default runs/<preset>-<timestamp>/events.jsonl)")
    p.add_argument("--headless", action="store_true",
                   help="no UI: one progress line per log interval (the default without a terminal)")
    p.add_argument("--nproc", type=int, default=1, metavar="N",
                   help="trainer processes on this machine, under torchrun with DDP (default 1)")
    p.add_argument("--resume", metavar="RUN_DIR|CKPT", help="continue a run from its directory or a checkpoint")
    p.add_argument("--rdzv", nargs=argparse.REMAINDER,
                   help="pass everything after it to torchrun: multi-node rendezvous flags, e.g. "
                        "--rdzv --nnodes=2 --rdzv-backend=c10d --rdzv-endpoint=HOST:29500")


def train(parser: Parser, argv: list[str]) -> int:
    rdzv: list[str] = []
    if "--rdzv" in argv:  # split before parsing, so that torchrun's flags are never read as ours
        i = argv.index("--rdzv")
        argv, rdzv = argv[:i], argv[i + 1:]
    a = parser.parse_intermixed_args(argv)
    if a.nproc < 1:
        raise BadInput(f"--nproc {a.nproc} must be at least 1")
    from trainers import config

    cfg = config.load(a.preset, a.overrides)  # bad preset / override: exit 2 before anything starts
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

        check_launch(a.preset, a.overrides, a.resume, a.log)
        if not a.log and not a.resume:
            from common.paths import default_log_path

            targs += ["--log", str(default_log_path(cfg["name"]))]  # named as a trainer names its runs
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


def replay_parser() -> Parser:
    """`cockpit --replay`: not a subcommand, an option of `cockpit` that takes the whole command line."""
    p = Parser(prog="cockpit --replay", formatter_class=_Formatter, epilog=EPILOG,
               usage="%(prog)s FILE [FILE ...] [--images [DIR]] [--color WHEN] [--x AXIS] [--smooth S]",
               description="A headless report of a recorded run (no UI, no terminal needed); of two or more "
                           "runs, one comparison.")
    p.add_argument("--replay", nargs="*", default=[], metavar="FILE",
                   help="event logs (events.jsonl) or run directories; or TensorBoard runs (a directory of "
                        "event files, or one), with the tensorboard extra")
    p.add_argument("--images", nargs="?", const="", default=None, metavar="DIR",
                   help="save image samples and the latest internals probe's heatmaps as PNG, in DIR (made if "
                        "missing) or beside the log")
    p.add_argument("--color", choices=("auto", "always", "never"), default="auto", metavar="WHEN",
                   help="colour codes: auto (on a terminal only), always or never")
    p.add_argument("--x", choices=("step", "tokens", "time"), default="step", metavar="AXIS",
                   help="x-axis of the loss chart: step (default), tokens or time")
    p.add_argument("--smooth", type=float, default=0.0, metavar="S",
                   help="EMA smoothing in [0, 1) for train curves (default 0: none)")
    return p


def replay(argv: list[str]) -> int:
    p = replay_parser()
    a = p.parse_args(argv)
    if not a.replay:  # nargs="*" rather than "+", so that `cockpit --replay --help` reaches --help
        p.error("--replay needs at least one log file")
    if not 0.0 <= a.smooth < 1.0:
        raise BadInput(f"--smooth {a.smooth} must be in [0, 1)")
    from pathlib import Path

    from cockpit.report import report
    from common import tfevents
    from common.reader import LogError, ReadStats
    from common.state import load_state

    color = None if a.color == "auto" else a.color == "always"
    paths = [tfevents.check_source(f) for f in a.replay]
    loaded = []
    for path in paths:
        stats = ReadStats()
        state = (tfevents.load_state if tfevents.tensorboard_run(path) else load_state)(path, stats)
        loaded.append((str(path), state, stats))
        if stats.events - state.bad_events <= 0:  # lines, none of them a usable event: not a run's log
            why = "; ".join(filter(None, [stats.summary(), state.bad_events and
                                          f"{state.bad_events} events with missing or mistyped fields"]))
            raise LogError(f"{path}: not a cockpit event log: no line of it is an event"
                           f"{f' ({why})' if why else ''}; pass a run's events.jsonl")
    if len(loaded) > 1:
        from cockpit.compare import compare_report

        sys.stdout.write(compare_report(loaded, color=color, x_axis=a.x, smoothing=a.smooth))
        return 0
    path, state, stats = loaded[0]
    images_dir = None
    if a.images is not None:
        images_dir = Path(a.images) if a.images else tfevents.run_dir(Path(path))
        try:
            images_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise BadInput(f"--images: cannot make the directory {images_dir} ({e.strerror or e}); give one "
                           "that can be written") from None
    sys.stdout.write(report(path, state, stats, color=color, images_dir=images_dir, x_axis=a.x,
                            smoothing=a.smooth))
    sys.stdout.flush()
    return 0


def presets_arguments(p: Parser) -> None:
    p.add_argument("--json", action="store_true", help="one JSON object per preset, for scripts")
    p.add_argument("--refresh", action="store_true", help="re-measure instead of using the cache")


def presets(parser: Parser, argv: list[str]) -> int:
    a = parser.parse_args(argv)
    from cockpit.presets_info import preset_table, presets_info

    infos = presets_info(refresh=a.refresh)
    if a.json:
        for info in infos:
            print(json.dumps(info))
    else:
        print(preset_table(infos))
    return 0


def plan_arguments(p: Parser) -> None:
    from trainers.plan import add_arguments

    add_arguments(p)


def plan(parser: Parser, argv: list[str]) -> int:
    from trainers.plan import main as plan_main

    return plan_main(argv, parser)


def watch_arguments(p: Parser) -> None:
    p.add_argument("file", metavar="FILE", help="a run's event log (events.jsonl) or its run directory; or a "
                                                "TensorBoard run (a directory of event files, or one)")


def watch(parser: Parser, argv: list[str]) -> int:
    a = parser.parse_args(argv)
    from common.tfevents import check_source

    check_source(a.file, empty_ok=True)  # a log just created by a starting trainer: its events are on their way
    return tui(watch=a.file)


def kernels_arguments(p: Parser) -> None:
    from kernels.bench import add_arguments

    add_arguments(p)


def kernels(parser: Parser, argv: list[str]) -> int:
    from cockpit.kernels_cmd import main as kernels_main

    return kernels_main(argv, parser)


def runs_arguments(p: Parser) -> None:
    from cockpit.runs_cmd import add_arguments

    add_arguments(p)


def runs(parser: Parser, argv: list[str]) -> int:
    from cockpit.runs_cmd import main as runs_main

    return runs_main(argv, parser)


def export_merged_arguments(p: Parser) -> None:
    from trainers.export_merged import add_arguments

    add_arguments(p)


def export_merged(parser: Parser, argv: list[str]) -> int:
    from trainers.export_merged import main as export_main

    return export_main(argv, parser)


def export_arguments(p: Parser) -> None:
    from cockpit.tensorboard_export import add_arguments

    add_arguments(p)


def export(parser: Parser, argv: list[str]) -> int:
    from cockpit.tensorboard_export import main as export_main

    return export_main(argv, parser)


def data_arguments(p: Parser) -> None:
    from trainers.dataprep import add_arguments

    add_arguments(p)


def data(parser: Parser, argv: list[str]) -> int:
    from trainers.dataprep import main as data_main

    return data_main(argv, parser)


SUBCOMMANDS: dict[str, Subcommand] = {  # summaries fit one line of `cockpit --help` on 80 columns
    "train": Subcommand("run a preset: the UI on a terminal, else headless", train_arguments, train),
    "watch": Subcommand("the UI on an event log, growing or finished", watch_arguments, watch),
    "presets": Subcommand("list presets: architecture, params, est. VRAM, profile", presets_arguments, presets),
    "plan": Subcommand("the micro-batch that fits a card, and where the memory goes", plan_arguments, plan),
    "kernels": Subcommand("fused Triton kernels vs their PyTorch references", kernels_arguments, kernels),
    "runs": Subcommand("browse past runs, or list them as a table or JSON", runs_arguments, runs),
    "export-merged": Subcommand("merge a LoRA / QLoRA fine-tune into its base weights", export_merged_arguments,
                                export_merged),
    "export": Subcommand("write a run as TensorBoard event files (--tensorboard OUT)", export_arguments, export),
    "data": Subcommand("tokenise corpora into shards, train a tokenizer, inspect", data_arguments, data),
}


if __name__ == "__main__":
    sys.exit(main())
