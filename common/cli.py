"""The one way bad usage is reported: one line `cockpit: error: <message>; see `<prog> --help``, exit 2.

Every argument parser of the project is a `Parser`. Its complaints (a missing argument, an unknown option,
a value of the wrong type) raise `BadInput` instead of exiting from deep inside argparse; each entry point
catches `BadInput` (and its own bad-input errors) and returns `fail(message)`, so no traceback is printed
and the exit code comes back as a plain return value.
"""
from __future__ import annotations

import argparse
import os
import sys


class BadInput(Exception):
    """Bad usage or input: printed as one `cockpit: error:` line, exit 2."""


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors name the help to read, e.g. `...; see `cockpit train --help``."""

    def error(self, message):
        raise BadInput(f"{message}; see `{self.prog} --help`")

    def print_help(self, file=None):
        """argparse's, without its silence on a failed write: help that cannot be written (a full disk) is one
        error line and exit 1, not a success with nothing shown."""
        out = file or sys.stdout
        if out is None:
            raise SystemExit(fail(STDOUT_CLOSED, 1))
        try:
            out.write(self.format_help())
            out.flush()
        except BrokenPipeError:  # `--help | head`: the reader has all it wanted
            drop_stdout()
            raise SystemExit(0) from None
        except OSError as e:
            raise SystemExit(output_failed(e)) from None


STDOUT_CLOSED = "cannot write the output: standard output is closed; send it to a file or /dev/null"


def fail(message: str, code: int = 2) -> int:
    """Print `cockpit: error: <message>` on stderr (when there is one: never onto stdout instead); return the
    exit code for the entry point to return."""
    if sys.stderr is not None:
        print(f"cockpit: error: {message}", file=sys.stderr)
    return code


def output_failed(error: OSError) -> int:
    """stdout refused what was written (a full disk, an I/O error): one error line; returns exit code 1."""
    drop_stdout()
    return fail(f"cannot write the output: {error.strerror or error}; free space or write it elsewhere", 1)


def drop_stdout() -> None:
    """Point stdout at /dev/null, so that what is still buffered for it goes nowhere instead of failing again
    (a second error, or a traceback at exit)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # no real stdout (a test's capture): nothing to flush at exit
        pass
