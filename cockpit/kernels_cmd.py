"""`cockpit kernels [--json] [--only NAME[,NAME]] ...`: the PyTorch vs Triton kernel table.
`cockpit kernels --compile sm_80|sm_86|sm_89|sm_90 [--only NAME[,NAME]]`: every kernel compiled for that GPU
architecture without a GPU, at each preset's full-size shapes (`python -m trainers.gpu_compile`, in a process
whose Triton interpreter is off); registers, spills and shared memory against the architecture's limits.

The benchmark runs in a subprocess (`python -m kernels.bench --json`), so this module, like the rest of the
cockpit CLI, never imports torch or triton: it validates the arguments, streams the child's `kernel`
events and prints them as JSON lines (--json) or as table rows while they arrive. The kernels panel of the
TUI reads the child's lines with `parse_line` the same way to stay responsive and re-run one kernel at a time.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from common import events as E
from common.cli import BadInput, Parser, fail
from kernels import _table
from kernels.bench import build_parser, parse_arch, parse_dtypes, parse_names


def bench_env() -> dict[str, str]:
    """The child's environment: this checkout's `kernels` package first on the path (the PyPI package of
    the same name must not shadow it)."""
    root = str(Path(__file__).resolve().parent.parent)
    env = dict(os.environ)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def parse_line(line: str) -> dict | None:
    """A valid `kernel` or `log` event (as a dict) from one line of the child's output; None for anything
    else (the child's other output, a malformed event)."""
    line = line.strip()
    if not line.startswith("{"):
        return None
    try:
        ev = E.decode(line.encode())
    except E.NotAnEvent:
        return None
    return E.as_dict(ev) if isinstance(ev, (E.Kernel, E.Log)) else None


def compile_for(arch: str, only: str) -> int:
    """`--compile ARCH`: the trainer's compile report, streamed; its exit status (1: a kernel fails the limits)."""
    cmd = [sys.executable, "-m", "trainers.gpu_compile", arch]
    if only:
        cmd += ["--only", ",".join(parse_names(only))]
    env = bench_env()
    env.pop("TRITON_INTERPRET", None)  # the kernels must be compiled, not interpreted
    try:
        return subprocess.run(cmd, env=env).returncode
    except OSError as e:
        return fail(f"cannot start the kernel compiler ({e})", 1)


def _forwarded(args) -> list[str]:
    out = []
    if args.only:
        out += ["--only", ",".join(parse_names(args.only))]
    out += ["--dtype", ",".join(parse_dtypes(args.dtype))]
    if args.all_shapes:
        out.append("--all-shapes")
    if args.device != "auto":
        out += ["--device", args.device]
    if args.reps:
        out += ["--reps", str(args.reps)]
    if args.compile is not None:
        out.append("--compile" if args.compile else "--no-compile")
    out += ["--seed", str(args.seed)]
    if args.list:
        out.append("--list")
    return out


def main(argv: list[str] | None = None, parser: Parser | None = None) -> int:
    """`cockpit kernels ARGS`; `parser` is the `cockpit kernels` subparser when the cockpit CLI calls."""
    parser = parser or build_parser(prog="cockpit kernels")
    try:
        args = parser.parse_args(argv)
        if isinstance(args.compile, str):
            arch = parse_arch(args.compile)
            parse_names(args.only)
        else:
            forwarded = _forwarded(args)
    except BadInput as e:
        return fail(str(e))
    except SystemExit as e:  # --help
        return e.code if isinstance(e.code, int) else 0
    if isinstance(args.compile, str):
        return compile_for(arch, args.only)
    if args.list:  # plain text from the child, passed through
        return subprocess.run([sys.executable, "-m", "kernels.bench", *forwarded], env=bench_env()).returncode
    cmd = [sys.executable, "-m", "kernels.bench", "--json", *forwarded]
    try:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=bench_env(), bufsize=1)
    except OSError as e:
        return fail(f"cannot start the kernel benchmark ({e})", 1)
    events: list[dict] = []
    with_compile = None
    try:
        for line in proc.stdout:
            ev = parse_line(line)
            if ev is None:
                continue
            if args.json:
                print(line.rstrip("\n"), flush=True)
                if ev["type"] == "kernel":
                    events.append(ev)
                continue
            if ev["type"] != "kernel":
                continue
            if with_compile is None:
                with_compile = "compile_ms" in ev or "compile_error" in ev  # torch.compile was timed
                print(_table.banner(ev))
                print(_table.header(with_compile))
            events.append(ev)
            print(_table.row(ev, with_compile), flush=True)
        rc = proc.wait()
    except KeyboardInterrupt:
        proc.terminate()
        proc.wait()
        return 1
    except BaseException:  # the output failed (a full disk): the benchmark stops with us, then main says why
        proc.terminate()
        proc.wait()
        raise
    if not args.json and events:
        print(_table.summary(events))
    if rc not in (0, 1):
        return fail(f"the kernel benchmark exited with status {rc} after {len(events)} result(s); "
                    "run `python -m kernels.bench` to see why", 1)
    return rc
