"""Where a run screen's events come from: a trainer subprocess this cockpit launched, or a log on disk.

Both are polled from a timer (cockpit.screens.pacing.TICK_S): one stat and one read of the new bytes per tick,
no polling storm, and nothing here ever blocks the UI: commands go down a non-blocking pipe, the trainer's
stdout/stderr go to a file beside its log (trainer.out) so a crash's traceback survives the UI.
No Textual and no torch here.
"""
from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

from common.events import COMMANDS, RunEnd, encode_command
from common.fmt import printable
from common.paths import OUT_NAME
from common.procs import trainer_alive
from common.reader import Follower


class LogSource:
    """Events of a log written by someone else (`cockpit watch FILE`, a run opened from the browser).

    Commands cannot go down a pipe we do not hold; `stop` is delivered as SIGTERM to the trainer pid of the
    log's run_start (the trainer treats SIGTERM as stop: checkpoint, then run_end stopped)."""

    launched = False
    ends_itself = False   # a log without run_end is settled by its trainer's pid (common/state.py settle)
    stoppable = True      # `x` sends its trainer SIGTERM

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.follower = Follower(self.path)
        self.out_path = self.path.parent / OUT_NAME
        self.output = OutputTail(self.out_path)

    @property
    def run_dir(self) -> Path:
        """Where the run's files are (screenshots and saved samples go there)."""
        return self.path.parent

    def poll(self) -> list:
        return self.follower.poll()

    def finish(self) -> list:
        return self.follower.finish()

    def returncode(self) -> int | None:
        return None

    def send(self, cmd: str, pid: int | None = None, started: float | None = None,
             prompt: str | None = None) -> str | None:
        """Deliver a command to the trainer of `pid` (whose run started at unix time `started`); returns None
        when sent, else why not (one line for the user)."""
        if cmd != "stop":
            return (f"`{cmd}` needs a trainer this cockpit launched (commands go down its stdin); "
                    "this log is only watched. `x` (stop) works: it sends SIGTERM")
        if not pid:
            return "no trainer pid in this log's run_start; cannot stop it from here"
        if not trainer_alive(pid, started):  # never signal a process that reused a dead trainer's pid
            return f"trainer pid {pid} is gone"
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return f"trainer pid {pid} is gone"
        except PermissionError:
            return f"not allowed to signal trainer pid {pid}"
        return None

    def close(self):
        pass


class TensorBoardSource(LogSource):
    """Events of a TensorBoard run (a directory of event files, or one file) written by any trainer, mapped
    onto ours by common/tfevents.py. Its trainer takes no commands from here; its end is the follower's to
    make (the files record none)."""

    ends_itself = True
    stoppable = False

    def __init__(self, path: str | Path):
        from common.tfevents import TfEventsFollower, run_dir

        self.path = Path(path)
        self.follower = TfEventsFollower(self.path)
        self.out_path = run_dir(self.path) / OUT_NAME   # never written: a TensorBoard run has no trainer.out
        self.output = OutputTail(self.out_path)

    @property
    def run_dir(self) -> Path:
        return self.follower.dir

    def send(self, cmd: str, pid: int | None = None, started: float | None = None,
             prompt: str | None = None) -> str | None:
        return f"`{cmd}` needs a trainer this cockpit launched; a TensorBoard run is only watched"


def open_source(path: str | Path) -> LogSource:
    """The source of a run on disk: a TensorBoard run (common/tfevents.py), else a cockpit log."""
    from common.tfevents import tensorboard_run

    return TensorBoardSource(path) if tensorboard_run(path) is not None else LogSource(path)


class TrainerProcess:
    """One trainer launched by the cockpit: `python -m trainers PRESET ... --log LOG --commands`.

    start_new_session=True puts it in its own session, so neither Ctrl-C in the cockpit's terminal nor a
    dropped SSH connection reaches it; it keeps running (headless, writing its log) after the UI exits."""

    launched = True
    stoppable = True

    def __init__(self, preset: str, overrides: list[str], log: str | Path, resume: str | None = None,
                 nproc: int = 1, cwd: str | Path | None = None, env: dict | None = None):
        self.preset, self.overrides, self.resume, self.nproc = preset, list(overrides), resume, nproc
        self.path = Path(log)
        self.out_path = self.path.parent / OUT_NAME
        self.output = OutputTail(self.out_path)
        self.follower = Follower(self.path)
        self.cwd, self.env = cwd, env
        self.run_dir = self.path.parent
        self.proc: subprocess.Popen | None = None
        self._stdin_fd: int | None = None
        self._pending = b""

    def argv(self) -> list[str]:
        from cockpit.launch import torchrun_argv, trainer_argv

        if self.nproc > 1:
            args = [self.preset, *self.overrides, "--log", str(self.path), "--commands"]
            if self.resume:
                args += ["--resume", self.resume]
            return torchrun_argv(self.nproc, args)
        return trainer_argv(self.preset, self.overrides, str(self.path), self.resume)

    def start(self) -> "TrainerProcess":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ if self.env is None else self.env)
        env.setdefault("PYTHONUNBUFFERED", "1")
        with open(self.out_path, "ab") as out:
            self.proc = subprocess.Popen(self.argv(), stdin=subprocess.PIPE, stdout=out, stderr=subprocess.STDOUT,
                                         cwd=self.cwd, env=env, start_new_session=True, close_fds=True)
        self._stdin_fd = self.proc.stdin.fileno()
        os.set_blocking(self._stdin_fd, False)
        return self

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def poll(self) -> list:
        self._flush()
        return self.follower.poll()

    def finish(self) -> list:
        return self.follower.finish()

    def returncode(self) -> int | None:
        return self.proc.poll() if self.proc else None

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def send(self, cmd: str, pid: int | None = None, started: float | None = None,
             prompt: str | None = None) -> str | None:
        """Queue one JSON-line command for the trainer's stdin; never blocks (a full pipe keeps the rest for
        the next tick). `prompt`: a sample's caption (text-conditioned runs). Returns None when queued, else why
        not."""
        if cmd not in COMMANDS:
            return f"unknown command {cmd!r}"
        if not self.alive:
            return "the trainer is not running"
        self._pending += encode_command(cmd, prompt)
        self._flush()
        return None

    def _flush(self):
        if not self._pending or self._stdin_fd is None:
            return
        try:
            n = os.write(self._stdin_fd, self._pending)
            self._pending = self._pending[n:]
        except BlockingIOError:
            pass
        except (BrokenPipeError, OSError):
            self._pending = b""

    def terminate(self):
        """SIGTERM (= stop with a checkpoint) to the trainer's whole session (torchrun and its ranks)."""
        self._signal(signal.SIGTERM)

    def kill(self):
        self._signal(signal.SIGKILL)

    def _signal(self, sig):
        if self.alive:
            try:
                os.killpg(self.proc.pid, sig)
            except (ProcessLookupError, PermissionError):  # not the leader of its session any more
                self.proc.send_signal(sig)

    def close(self):
        """Let go of the pipe (the UI is leaving): the trainer's stdin reader ends, training goes on.
        Commands still queued (a full pipe) are sent first."""
        self._flush()
        if self.proc is not None and self.proc.stdin is not None:
            try:
                self.proc.stdin.close()
            except OSError:
                pass


# --- the trainer process's output ------------------------------------------------------------------------

class OutputTail:
    """The new complete lines of a trainer's output file (trainer.out) since the last call: warnings and
    tracebacks the log pane shows beside the log events. One stat per call; at most MAX_BYTES read (a flood
    keeps its newest part); control characters are shown as pictures, long lines are cut."""

    MAX_BYTES = 65536
    MAX_LINE = 400

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.offset = 0
        self._partial = b""

    def poll(self) -> list[str]:
        try:
            size = self.path.stat().st_size
        except OSError:
            return []
        if size < self.offset:          # rewritten from the start
            self.offset, self._partial = 0, b""
        if size == self.offset:
            return []
        start = max(self.offset, size - self.MAX_BYTES)
        try:
            with open(self.path, "rb") as f:
                f.seek(start)
                data = f.read(size - start)
        except OSError:
            return []
        skipped, self.offset = start > self.offset, start + len(data)
        if skipped:                     # part of a flood was left out: the first line read is partial
            self._partial = b""
            data = data[data.find(b"\n") + 1:] if b"\n" in data else b""
        data = self._partial + data
        *lines, self._partial = data.split(b"\n")
        if len(self._partial) > self.MAX_BYTES:
            self._partial = b""
        out = []
        for raw in lines:
            line = printable(raw.decode("utf-8", "replace").rstrip("\r"))
            if line.strip():
                out.append(line if len(line) <= self.MAX_LINE else line[: self.MAX_LINE - 1] + "…")
        return out


def bad_input_line(state, out_path: Path | None) -> str | None:
    """The trainer's own `cockpit: error:` line (without the prefix) when it refused to start: exit code 2
    before any run_start. None for a run that started, or ended otherwise."""
    if state.exit_code != 2 or state.run_id is not None or out_path is None:
        return None
    errors = [line for line in tail_text(out_path).splitlines() if line.startswith("cockpit: error: ")]
    return errors[-1].removeprefix("cockpit: error: ") if errors else None


def forget_unstarted_run(log: Path) -> None:
    """Remove the run directory the cockpit made for a trainer that refused to start: nothing but its empty
    log and its output (whose one line the cockpit prints) is in it. Anything else in it keeps it."""
    run_dir = Path(log).parent
    try:
        entries = list(run_dir.iterdir())
        if all(p.name == OUT_NAME or (p == Path(log) and p.stat().st_size == 0) for p in entries):
            for p in entries:
                p.unlink()
            run_dir.rmdir()
    except OSError:
        pass  # a directory we cannot clear is left as it is


def tail_text(path: str | Path, max_lines: int = 40, max_bytes: int = 32768) -> str:
    """The last lines of a text file ('' when missing); used when a trainer died before writing run_end."""
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            data = f.read()
    except OSError:
        return ""
    lines = data.decode("utf-8", "replace").splitlines()
    if size > max_bytes and lines:
        lines = lines[1:]
    return "\n".join(lines[-max_lines:])


def failure_event(state, exit_code: int | None, out_path: Path | None) -> RunEnd:
    """A run_end for a trainer that died without writing one: the exit code and its output's tail."""
    tail = tail_text(out_path) if out_path is not None else ""
    where = f"; last lines of {out_path}:\n{tail}" if tail else (f"; {out_path} is empty" if out_path else "")
    how = f"exit code {exit_code}" if exit_code is not None and exit_code >= 0 else \
        f"signal {-exit_code}" if exit_code is not None else "unknown exit"
    return RunEnd(time=state.last_time or 0.0, status="failed", step=state.step,
                  error=f"the trainer ended ({how}) without writing run_end{where}",
                  exit_code=exit_code if exit_code is not None else 1, synthetic=True)
