"""What the cockpit's full screens share: `?` lists the screen's keys, `q` quits (asking first while a
trainer launched here runs), and for the screens with a loss chart its view keys."""
from __future__ import annotations

from textual.screen import Screen


class CockpitScreen(Screen):
    HELP_TITLE = "cockpit"   # the heading of this screen's key list

    def action_help(self):
        from cockpit.screens.help import HelpScreen

        self.app.push_screen(HelpScreen(self.HELP_TITLE, self))

    def action_quit(self):
        self.app.request_quit()


class ChartKeys:
    """The actions of the loss chart's view keys, for a screen with one LossPlot; the screen binds the keys
    it offers (e EMA strength, l log-y, t x-axis, m markers) in its own BINDINGS, in its footer's order."""

    def _view(self, change):
        from cockpit.widgets.loss_plot import LossPlot

        plot = self.query_one(LossPlot)
        change(plot)
        plot.border_subtitle = plot.subtitle()

    def action_smoothing(self):
        self._view(lambda plot: plot.next_smoothing())

    def action_log_y(self):
        self._view(lambda plot: plot.toggle_log_y())

    def action_x_axis(self):
        self._view(lambda plot: plot.next_x_axis())

    def action_markers(self):
        self._view(lambda plot: plot.toggle_markers())
