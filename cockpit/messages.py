"""The TUI's messages: small dataclasses posted by workers and widgets, handled by screens."""
from __future__ import annotations

from dataclasses import dataclass, field

from textual.message import Message


@dataclass
class PresetsMeasured(Message):
    """presets_info() finished in its worker: measured facts per preset (or why it failed)."""

    infos: list = field(default_factory=list)
    error: str | None = None


@dataclass
class PresetMeasured(Message):
    """One preset's facts arrived from the measuring worker: `done` of `total` presets measured so far."""

    info: dict
    done: int
    total: int


@dataclass
class LaunchRequested(Message):
    """The picker (or the runs browser) wants a run of `preset` with `overrides`; `resume`: the run directory it
    continues from."""

    preset: str
    overrides: list = field(default_factory=list)
    resume: str | None = None


@dataclass
class StateLoaded(Message):
    """A run screen's first catch-up read finished in its worker (a finished log replays from here)."""

    state: object
    error: str | None = None


@dataclass
class KernelEvent(Message):
    """One `kernel` event line from `python -m cockpit kernels --json`."""

    event: dict
    generation: int = 0


@dataclass
class KernelsDone(Message):
    """The kernels subprocess ended: its exit code and, on failure, the tail of its output."""

    returncode: int
    output: str = ""
    generation: int = 0


@dataclass
class RunsIndexed(Message):
    """The runs index was (re)built in a worker."""

    runs: list = field(default_factory=list)
    error: str | None = None


@dataclass
class RunsLoaded(Message):
    """Several runs' logs folded into states for the comparison view: [(label, RunState, RunInfo)]."""

    runs: list = field(default_factory=list)
    error: str | None = None
