"""The one way bad usage is reported: one line `cockpit: error: <message>; see `<prog> --help``, exit 2.

Every argument parser of the project is a `Parser`. Its complaints (a missing argument, an unknown option,
a value of the wrong type) raise `BadInput` instead of exiting from deep inside argparse; each entry point
catches `BadInput` (and its own bad-input errors) and returns `fail(message)`, so no traceback is printed
and the exit code comes back as a plain return value.
"""
from __future__ import annotations

import argparse
import sys


class BadInput(Exception):
    """Bad usage or input: printed as one `cockpit: error:` line, exit 2."""


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors name the help to read, e.g. `...; see `cockpit train --help``."""

    def error(self, message):
        raise BadInput(f"{message}; see `{self.prog} --help`")


def fail(message: str, code: int = 2) -> int:
    """Print `cockpit: error: <message>` on stderr; return the exit code for the entry point to return."""
    print(f"cockpit: error: {message}", file=sys.stderr)
    return code
