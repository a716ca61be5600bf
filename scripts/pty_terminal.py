"""A program in a pseudo-terminal, driven and read like a user's terminal emulator: the benchmarks time the
real app with it (bench_overhead, bench_replay) and tests drive it where Textual's pilot cannot (signals,
the real Linux driver). Standard library only."""
from __future__ import annotations

import fcntl
import os
import pty
import select
import signal
import struct
import termios
import threading
import time
from pathlib import Path


class Terminal:
    """A program in a pseudo-terminal (cols x rows) whose output a thread drains and keeps, like a terminal
    emulator: `wait_for(b"text")` returns the time the text first appeared, measured from start."""

    def __init__(self, argv: list[str], cols: int = 160, rows: int = 48, cwd=None, env=None,
                 markers: list[bytes] = ()):
        self.out = bytearray()
        self.seen: dict[bytes, float] = {}
        self.watch: list[bytes] = list(markers)  # watched from the first byte on
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # child: the program, with the pty as its controlling terminal
            try:
                if cwd:
                    os.chdir(cwd)
                os.execvpe(argv[0], argv, {**os.environ, "TERM": "xterm-256color", **(env or {})})
            finally:
                os._exit(127)
        self.t0 = time.perf_counter()
        fcntl.ioctl(self.fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        os.kill(self.pid, signal.SIGWINCH)
        self.lock = threading.Lock()
        self.closed = threading.Event()
        self.status: int | None = None
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self):
        while True:
            try:
                r, _, _ = select.select([self.fd], [], [], 0.5)
                if not r:
                    continue
                data = os.read(self.fd, 1 << 16)
            except OSError:
                break
            if not data:
                break
            now = time.perf_counter() - self.t0
            with self.lock:
                self.out += data
                tail = bytes(self.out[-(len(data) + 256):])
                for w in self.watch:
                    if w not in self.seen and w in tail:
                        self.seen[w] = now
        self.closed.set()

    def wait_for(self, text: bytes, timeout: float) -> float | None:
        """When `text` first appeared (seconds since start); give it in `markers` to time it from the start,
        else it is watched from now on (already-shown text counts as appearing now)."""
        with self.lock:
            if text not in self.watch:
                self.watch.append(text)
                if text in self.out:
                    self.seen[text] = time.perf_counter() - self.t0
        deadline = time.time() + timeout
        while time.time() < deadline:
            with self.lock:
                if text in self.seen:
                    return self.seen[text]
            if self.closed.is_set():
                return None
            time.sleep(0.005)
        return None

    def send(self, data: bytes):
        os.write(self.fd, data)

    def wait(self, timeout: float) -> int | None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.status = os.waitstatus_to_exitcode(status)
                return self.status
            time.sleep(0.02)
        return None

    def kill(self):
        if self.status is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
                os.waitpid(self.pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
        # The drain thread must be gone before the fd is closed: the next Terminal's pty gets the same fd
        # number, and a drain thread still selecting on it would steal the new program's first frame.
        self.closed.wait(5)
        try:
            os.close(self.fd)
        except OSError:
            pass


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used so far (from /proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def thread_count(pid: int) -> int:
    """Threads of a running process (from /proc/PID/task)."""
    return len(os.listdir(f"/proc/{pid}/task"))
