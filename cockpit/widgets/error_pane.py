"""The error pane: a failed run's error and traceback (from run_end, or the tail of trainer.out when the
trainer died before writing one) and its exit code. Hidden while the run is healthy."""
from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.widgets import Static


class ErrorPane(VerticalScroll):
    DEFAULT_CSS = """
    ErrorPane { display: none; }
    ErrorPane.-shown { display: block; }
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._shown_error = None

    def compose(self) -> ComposeResult:
        yield Static("", id="error-text")

    pane, heavy = "error", False

    @staticmethod
    def signature(s, note=None) -> tuple:
        return (s.status, s.error, s.exit_code)

    def update_state(self, state, note: str | None = None):
        err = state.error if state.status in ("failed", "killed") or state.error else None
        if state.status == "killed" and not err:
            err = ("the log ends without run_end and its trainer is gone: the run was killed "
                   "(resume it with `cockpit train PRESET --resume RUN_DIR`)")
        if err == self._shown_error:
            return
        self._shown_error = err
        self.set_class(bool(err), "-shown")
        if err:
            code = f" · exit code {state.exit_code}" if state.exit_code is not None else ""
            self.border_title = f"run {state.status}{code}"
            text = Text(err.rstrip(), style="")
            first = err.splitlines()[0] if err else ""
            text.stylize("bold red", 0, len(first))
            self.query_one("#error-text", Static).update(text)
