"""`i` on the run screen: inside the model while it learns. The run's recorded internals probes (common/state.py
keeps the newest), one view at a time (cockpit/internals.py): attention maps per layer and head, the logit lens,
MoE routing and its load over the probes, Mamba's Δ, RWKV's decays, state and token shift, RetNet's retention,
BitNet's ternary weights and activation outliers, diffusion loss by timestep, gradient norms and update ratios.
`[` and `]` step through the probes so a pattern can be watched as it forms (a view of the history shows the
probes up to the one chosen); left and right change the view. While the run trains, the newest probe is shown as
it arrives (unless an older one was chosen)."""
from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.widgets import Footer, Static

from cockpit.internals import headline, views_of
from cockpit.screens.base import CockpitScreen
from cockpit.widgets.internals_view import InternalsView

REFRESH_S = 1.0   # how often a live run's newest probe is looked for


class InternalsScreen(CockpitScreen):
    HELP_TITLE = "internals"
    BINDINGS = [
        Binding("question_mark", "help", "Help", key_display="?"),
        Binding("left_square_bracket", "older", "Older probe", key_display="["),
        Binding("right_square_bracket", "newer", "Newer probe", key_display="]"),
        Binding("right,v", "view(1)", "Next view", key_display="→"),
        Binding("left", "view(-1)", "Previous view", key_display="←"),
        Binding("escape,q,i", "close", "Back"),
    ]
    DEFAULT_CSS = """
    #internals-head { height: auto; padding: 0 1; background: $boost; }
    #internals-caption { height: auto; padding: 0 1; color: $text-muted; text-style: italic; }
    #internals-body { height: 1fr; padding: 0 1; }
    """

    def __init__(self, state_of):
        """state_of: returns the run's RunState as it is now (the run screen's, folded as events arrive)."""
        super().__init__()
        self.state_of = state_of
        self.index: int | None = None   # the probe shown, into state.internals; None: the newest
        self.view_title: str | None = None
        self._shown: tuple | None = None

    def compose(self) -> ComposeResult:
        with Vertical(id="internals"):
            yield Static("", id="internals-head")
            yield Static("", id="internals-caption")
            with VerticalScroll(id="internals-body"):
                yield InternalsView(id="internals-view")
        yield Footer(show_command_palette=False)

    def on_mount(self):
        self.refresh_view()
        self.set_interval(REFRESH_S, self.refresh_view)

    # --- what is shown ---------------------------------------------------------------------------------
    def probes(self) -> list:
        return list(self.state_of().internals)

    def current(self):
        probes = self.probes()
        if not probes:
            return None, probes
        i = len(probes) - 1 if self.index is None else min(self.index, len(probes) - 1)
        return probes[i], probes

    def refresh_view(self):
        ev, probes = self.current()
        views = views_of(ev) if ev is not None else []
        view = next((v for v in views if v.title == self.view_title), views[0] if views else None)
        key = (id(ev), len(probes), view.title if view else None)
        if key == self._shown:
            return
        self._shown = key
        head, caption = self.query_one("#internals-head", Static), self.query_one("#internals-caption", Static)
        if ev is None:
            head.update(Text("internals", style="bold"))
            caption.update("")
        else:
            i = probes.index(ev)
            text = Text.assemble((f"probe {i + 1}/{len(probes)}", "bold"), " · ", headline(ev))
            titles = Text("views: ", style="dim")
            for v in views:
                titles.append(f" {v.title} ", style="reverse bold" if v is view else "dim")
            head.update(Text("\n").join([text, titles]))
            caption.update(view.caption if view else "")
        self.query_one(InternalsView).show(ev, view, probes[:probes.index(ev) + 1] if ev is not None else [])

    # --- keys ------------------------------------------------------------------------------------------
    def _step(self, delta: int):
        probes = self.probes()
        if not probes:
            return
        i = (len(probes) - 1 if self.index is None else self.index) + delta
        i = min(max(i, 0), len(probes) - 1)
        self.index = None if i == len(probes) - 1 else i   # at the newest: follow new probes as they come
        self.refresh_view()

    def action_older(self):
        self._step(-1)

    def action_newer(self):
        self._step(1)

    def action_view(self, delta: int):
        ev, _ = self.current()
        if ev is None:
            return
        views = views_of(ev)
        titles = [v.title for v in views]
        i = titles.index(self.view_title) if self.view_title in titles else 0
        self.view_title = titles[(i + delta) % len(titles)]
        self.refresh_view()

    def action_close(self):
        self.app.pop_screen()
