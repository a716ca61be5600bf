"""The terminal driver: Textual's LinuxDriver, made safe against a stop it did not ask for.

Ctrl-Z goes through SIGTSTP: Textual leaves application mode (stopping its input and writer threads),
stops, and on SIGCONT comes back. A plain SIGSTOP (`kill -STOP`, a debugger, a benchmark freezing the UI)
tears nothing down, yet Textual's SIGCONT handler starts application mode again: a second input thread
and writer thread every time (measured: 5 threads, 25 after five stops, each input thread polling 10 times
a second). Here a SIGCONT after such a stop leaves application mode properly and re-enters it (terminal
modes restored, one set of threads, a full repaint), from the event loop rather than inside the signal
handler, where joining the input thread could deadlock.
"""
from __future__ import annotations

from textual.drivers.linux_driver import LinuxDriver


class CockpitLinuxDriver(LinuxDriver):
    def _sigcont_application(self, *args) -> None:
        if self._auto_restart and not self._must_signal_resume:   # stopped from outside, not via SIGTSTP
            self._loop.call_soon_threadsafe(self._restart_after_stop)
            return
        super()._sigcont_application(*args)

    def _restart_after_stop(self) -> None:
        self.suspend_application_mode()
        self.resume_application_mode()
