"""The cockpit TUI (Textual): the preset picker, the run screen, watch and replay, the runs browser.

    cockpit                      picker, then the run screen
    cockpit PRESET [k=v ...]     launch at once (validated by the CLI first)
    cockpit watch FILE           the run screen on a growing (tailed) or finished (replayed) log
    cockpit runs                 the runs browser

Nothing here imports torch: the trainer runs in a subprocess (cockpit/trainer_proc.py), preset facts are
measured in one (cockpit/presets_info.py), and the screens draw a RunState folded by common/state.py.
"""
from __future__ import annotations

import sys
from pathlib import Path

from textual.app import App
from textual.binding import Binding

from cockpit.messages import LaunchRequested
from cockpit.trainer_proc import bad_input_line, forget_unstarted_run


class CockpitApp(App):
    CSS_PATH = "styles/cockpit.tcss"
    TITLE = "cockpit"
    # ctrl+p: the command palette (themes, screenshot, keys, quit); not in the footer (the screens' keys need
    # its room), the help screen names it
    BINDINGS = [Binding("ctrl+q", "quit", "Quit", show=False, priority=True)]

    def __init__(self, preset: str | None = None, overrides=(), resolved: dict | None = None,
                 watch: str | None = None, log: str | None = None, resume: str | None = None, nproc: int = 1,
                 *, start: str = "picker", presets: list[dict] | None = None, runs_dir: str | None = None,
                 trainer_env: dict | None = None, trainer_cwd: str | None = None):
        super().__init__()
        self.start = ("launch" if preset else "watch" if watch else start)
        self.preset, self.overrides, self.resolved = preset, list(overrides), resolved
        self.watch_path, self.log_path, self.resume, self.nproc = watch, log, resume, nproc
        self.presets = presets                  # injected preset facts (tests); None: measure them
        self.runs_dir = runs_dir
        self.trainer_env, self.trainer_cwd = trainer_env, trainer_cwd
        self.farewell: str | None = None        # printed by run_tui after the UI is gone
        self.runs_view: dict | None = None      # the runs browser's sort, marks and filter, kept for its reopening
        self.farewell_is_error = False          # ... on stderr
        self.last_run = None                    # the RunScreen of the latest launched run
        self.first_launch = None                # the RunScreen of the run the command line asked for
        self.exit_status = 0

    def get_driver_class(self):
        cls = super().get_driver_class()
        if cls.__name__ == "LinuxDriver" and cls.__module__ == "textual.drivers.linux_driver":
            from cockpit.driver import CockpitLinuxDriver

            return CockpitLinuxDriver
        return cls

    # --- start-up ------------------------------------------------------------------------------------
    def on_mount(self):
        if self.start == "launch":
            self.launch(self.preset, self.overrides, log=self.log_path, resume=self.resume, nproc=self.nproc)
        elif self.start == "watch":
            self.open_log(self.watch_path)
        elif self.start == "runs":
            self.open_runs()
        else:
            self.show_picker()

    def picker(self):
        from cockpit.screens.picker import PickerScreen

        for screen in self.screen_stack:
            if isinstance(screen, PickerScreen):
                return screen
        return None

    def show_picker(self):
        from cockpit.screens.picker import PickerScreen

        if self.picker() is None:
            self.push_screen(PickerScreen(self.presets))

    # --- runs ----------------------------------------------------------------------------------------
    def on_launch_requested(self, msg: LaunchRequested):
        self.launch(msg.preset, msg.overrides, resume=msg.resume)

    def launch(self, preset: str, overrides=(), log: str | None = None, resume: str | None = None,
               nproc: int = 1):
        from cockpit.screens.run import RunScreen
        from cockpit.trainer_proc import TrainerProcess
        from common.paths import default_log_path

        alive = [s for s in self.screen_stack if isinstance(s, RunScreen) and s.alive]
        if alive:
            self.notify("a run is already going; stop it (x) or quit first", severity="warning")
            return
        name = (self.resolved or {}).get("name") if preset == self.preset and self.resolved else None
        name = name or Path(preset).stem
        if not log and resume:
            rd = Path(resume)
            log = str((rd if rd.is_dir() else rd.parent) / "events.jsonl")
        log_path = Path(log) if log else default_log_path(name, self.runs_dir)
        proc = TrainerProcess(preset, list(overrides), log_path, resume=resume, nproc=nproc,
                              cwd=self.trainer_cwd, env=self.trainer_env)
        try:
            proc.start()
        except OSError as e:
            self.notify(f"could not start the trainer: {e}", severity="error", markup=False)
            return
        screen = RunScreen(proc)
        self.last_run = screen
        self.first_launch = self.first_launch or screen
        self.push_screen(screen)

    def open_log(self, path: str | Path):
        """The run screen on an existing log: a finished run replays, a live one is tailed."""
        from cockpit.screens.run import RunScreen
        from cockpit.trainer_proc import open_source

        self.push_screen(RunScreen(open_source(path)))

    def open_runs(self):
        from cockpit.screens.runs import RunsScreen

        self.push_screen(RunsScreen(self.runs_dir))

    def run_ended(self, screen):
        """A launched trainer exited: the exit status of `cockpit` follows the latest run. A trainer that
        refused its start (exit 2, before run_start: a model that cannot be built, no CUDA, bad data) is bad
        input: launched from the command line, the cockpit ends with that one line and exit code 2."""
        if screen is not self.last_run:
            return
        self.exit_status = 1 if screen.state.status == "failed" else 0
        refused = bad_input_line(screen.state, screen.source.out_path)
        if refused and self.start == "launch" and screen is self.first_launch:
            forget_unstarted_run(screen.source.path)
            self.farewell, self.farewell_is_error, self.exit_status = f"cockpit: error: {refused}", True, 2
            self.exit()

    def back_to_picker(self, screen):
        """Leave a run screen (or the browser) for the picker, creating it when the app started elsewhere;
        a run opened from the browser goes back to the browser."""
        from cockpit.screens.runs import RunsScreen

        self.pop_screen()
        if self.picker() is None and not any(isinstance(s, RunsScreen) for s in self.screen_stack):
            self.show_picker()

    # --- quitting ------------------------------------------------------------------------------------
    def live_run_screen(self):
        from cockpit.screens.run import RunScreen

        for s in reversed(self.screen_stack):
            if isinstance(s, RunScreen) and s.alive:
                return s
        return None

    def action_quit(self):
        self.request_quit()

    # --- screenshots -----------------------------------------------------------------------------------
    def action_screenshot(self, filename: str | None = None, path: str | None = None):
        """Save the screen as SVG: into the run's directory on a run screen, else the current directory;
        the path is shown."""
        from datetime import datetime

        if path is None:
            run_dir = getattr(getattr(self.screen, "source", None), "run_dir", None)
            path = str(run_dir) if run_dir is not None else "."
        name = filename or f"cockpit-{datetime.now():%Y%m%d-%H%M%S}.svg"
        try:
            saved = self.save_screenshot(name, path)
        except OSError as e:
            self.notify(f"screenshot not saved: {e}", severity="error", markup=False)
            return None
        self.notify(f"screenshot saved: {saved}", markup=False)
        return saved

    def get_system_commands(self, screen):
        for cmd in super().get_system_commands(screen):
            if cmd.title == "Screenshot":  # ours: into the run directory, the path shown
                cmd = type(cmd)(cmd.title, "Save an SVG screenshot (into the run's directory on a run screen)",
                                self.action_screenshot)
            yield cmd

    def request_quit(self):
        """Quit, asking first when a trainer launched here is still running."""
        live = self.live_run_screen()
        if live is not None:
            if live.quit_when_done:
                live.source.terminate()   # second request while stopping: SIGTERM the whole session
                self.exit()
                return
            live.ask_quit()
            return
        watched = self.watched_live()
        if watched is not None:
            self.farewell = (f"cockpit: the run is still being written; reattach with: "
                             f"cockpit watch {watched.source.path}")
        self.exit()

    def watched_live(self):
        from cockpit.screens.run import RunScreen

        for s in self.screen_stack:
            if isinstance(s, RunScreen) and not s.source.launched and s.writer_alive:
                return s
        return None

    def leave_running(self, screen):
        """Quit the UI, the trainer keeps going headless (its own session; the log keeps growing)."""
        screen.detach()
        self.farewell = (f"cockpit: the run continues headless (pid {screen.source.pid}), writing "
                         f"{screen.source.path}\nreattach with: cockpit watch {screen.source.path}")
        self.exit()


def run_tui(preset: str | None = None, overrides=(), resolved: dict | None = None, watch: str | None = None,
            log: str | None = None, resume: str | None = None, nproc: int = 1, runs: str | None = None) -> int:
    """The `cockpit` UI; returns the exit code (1 when the latest launched run failed, or when the UI itself
    failed: Textual has then printed why, and that is never a success). `runs=DIR` opens the runs browser on
    DIR (`cockpit runs`)."""
    app = CockpitApp(preset, overrides, resolved, watch, log, resume, nproc,
                     start="runs" if runs is not None else "picker", runs_dir=runs)
    app.run()
    if app.return_code:
        return app.return_code
    if app.farewell:
        print(app.farewell, file=sys.stderr if app.farewell_is_error else sys.stdout)
    return app.exit_status
