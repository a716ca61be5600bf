"""Colour in the headless reports (`cockpit --replay`): whether to use it, and how to take it out again."""
from __future__ import annotations

import os
import re
import sys

ANSI = re.compile(r"\x1b\[[0-9;]*m")


def strip_ansi(text: str) -> str:
    return ANSI.sub("", text)


def use_color() -> bool:
    """Colour only on a terminal that has it, and never with NO_COLOR set (no-color.org)."""
    if os.environ.get("NO_COLOR"):
        return False
    return sys.stdout.isatty() and os.environ.get("TERM", "") not in ("", "dumb")
