"""What a user asks of a running trainer: commands on stdin and signals. No torch here, so that the signal
handlers can be installed before anything slow is imported.

Commands are JSON lines (common/events.py parse_command: pause, resume, stop, sample [with a prompt], checkpoint). The
reader thread skips a line it cannot use (binary garbage, a 100000-deep JSON, a line longer than
MAX_COMMAND_BYTES) and keeps reading: a bad line never costs the commands after it.

SIGINT and SIGTERM mean stop; what stop means depends on the phase:
- starting (imports, config, data, model build; no event written yet): the first signal ends the process at
  once with STOPPED_EXIT and one line, abandoning whatever it was waiting for (a slow import, a FIFO) and
  undoing what the start made (on_abandon: an empty run directory); an exception
  raised instead could land half-way through importing torch, which then aborts the interpreter;
- training: the first signal stops at the next step boundary, with a checkpoint and `run_end` stopped; the
  third abandons the step, eval or checkpoint write in progress (KeyboardInterrupt inside the loop's
  `insistable` block; the last complete checkpoint stays, the run still ends stopped);
- ended (`run_end` written): signals are ignored, so that the process exits with its run's code and no
  traceback whenever they come, even while the interpreter shuts down.
A run stopped by signals, one or several, at any moment, exits STOPPED_EXIT, as a run stopped by the
`stop` command does.
"""
from __future__ import annotations

import collections
import os
import signal
import sys
import threading
from contextlib import contextmanager

from common.events import parse_command

STOPPED_EXIT = 0  # completed or stopped (by `stop`, Ctrl-C or SIGTERM); 1 failed; 2 bad input
INSIST = 3  # the signal that abandons the work in progress
MAX_PENDING_PROMPTS = 16  # prompts waiting for a step boundary; older ones give way
MAX_COMMAND_BYTES = 64 * 1024  # a command is a few bytes; a longer line is skipped unread
STARTING, TRAINING, ENDED = "starting", "training", "ended"


class Controls:
    """Flags set by stdin commands and signals, read by the loop between steps."""

    def __init__(self):
        self.paused = threading.Event()
        self.stop = threading.Event()
        self.sample = threading.Event()
        self.prompts: collections.deque[str] = collections.deque(maxlen=MAX_PENDING_PROMPTS)  # sample's prompts
        self.checkpoint = threading.Event()
        self.wake = threading.Event()
        self.signals = 0
        self.phase = STARTING
        self._insistable = False
        self._installed = False
        self._abandon: list = []  # what a start ended by a signal undoes (an empty run directory it made)
        self._interrupted = False  # at most one KeyboardInterrupt: a second one could land in the handler of
        # the first, outside every try that catches it

    def command(self, line: str | bytes):
        parsed = parse_command(line)
        if parsed is None:
            return
        cmd, prompt = parsed
        if cmd == "pause":
            self.paused.set()
        elif cmd == "resume":
            self.paused.clear()
        elif cmd == "stop":
            self.stop.set()
        elif cmd == "sample":
            if prompt is not None:
                self.prompts.append(prompt)
            self.sample.set()
        elif cmd == "checkpoint":
            self.checkpoint.set()
        self.wake.set()

    def read_stdin(self, read=None):
        """Serve the commands read by `read(n) -> bytes` (default: stdin's descriptor) in a thread until the
        stream closes. The descriptor is read directly: a thread blocked in a buffered stdin would hold its
        lock, and the interpreter aborts when it cannot take that lock at exit."""
        if read is None:
            if sys.stdin is None:
                return
            fd = sys.stdin.fileno()

            def read(n: int) -> bytes:
                return os.read(fd, n)

        def reader():
            try:
                for line in command_lines(read):
                    try:
                        self.command(line)
                    except Exception:  # noqa: BLE001, S110 — one bad line must not end the commands after it
                        pass
            except (OSError, ValueError):
                pass
            # stdin closed: the cockpit went away. Keep running detached (the log keeps growing); a run
            # paused by a cockpit that no longer exists would wait for ever, so it resumes.
            self.paused.clear()
            self.wake.set()
        threading.Thread(target=reader, name="cockpit-stdin", daemon=True).start()

    # --- signals ---------------------------------------------------------------------------------------
    def install_signals(self):
        signal.signal(signal.SIGINT, self._on_signal)
        signal.signal(signal.SIGTERM, self._on_signal)
        if hasattr(signal, "SIGHUP"):
            signal.signal(signal.SIGHUP, signal.SIG_IGN)  # an SSH drop must not kill the run
        if hasattr(signal, "SIGXFSZ"):  # past `ulimit -f` a write fails (EFBIG, reported) instead of killing
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        self._installed = True

    def _on_signal(self, signum, frame):
        self.signals += 1
        self.stop.set()
        self.paused.clear()
        self.wake.set()
        if self.phase == STARTING:
            for stream in (sys.stdout, sys.stderr):
                try:
                    stream.flush()
                except Exception:  # noqa: BLE001, S110 — e.g. RuntimeError "reentrant call" when the signal
                    pass  # came in the middle of a write to that stream: raised here, a loader could swallow it
            for undo in self._abandon:
                try:
                    undo()
                except Exception:  # noqa: BLE001, S110 — the start ends now whatever is left
                    pass
            try:
                os.write(2, f"cockpit: stopped by {signal.Signals(signum).name} while starting, before the first "
                            "step; nothing was trained\n".encode())
            except OSError:
                pass
            os._exit(STOPPED_EXIT)
        if not self._interrupted and self.signals >= INSIST and self._insistable:
            self._interrupted = True
            raise KeyboardInterrupt

    def on_abandon(self, undo):
        """Call undo() if a signal ends the start (the process then exits at once, without unwinding)."""
        self._abandon.append(undo)

    def training(self):
        """The run's log is about to start: from now on a signal asks for a clean stop."""
        self.phase = TRAINING

    @contextmanager
    def insistable(self):
        """Inside this block the third signal abandons the work in progress (KeyboardInterrupt)."""
        self._insistable = True
        try:
            yield
        finally:
            self._insistable = False

    def ended(self):
        """The run's end is recorded: further signals change nothing (ignored, not left to the default
        action, which would kill the process with the signal's code while it exits)."""
        self.phase = ENDED
        if self._installed and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)


def command_lines(read):
    """The lines of a byte stream read by `read(n)`, each at most MAX_COMMAND_BYTES: a longer one is skipped
    to its end without being kept, so that a line without end cannot fill the memory."""
    buf, skipping = b"", False
    while True:
        chunk = read(MAX_COMMAND_BYTES)
        if not chunk:
            if buf and not skipping:
                yield buf
            return
        buf += chunk
        while (end := buf.find(b"\n")) >= 0:
            line, buf = buf[:end + 1], buf[end + 1:]
            if not skipping and len(line) <= MAX_COMMAND_BYTES:
                yield line
            skipping = False
        if len(buf) > MAX_COMMAND_BYTES:
            buf, skipping = b"", True
