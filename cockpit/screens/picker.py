"""The preset picker: every preset with its architecture, parameters, estimated VRAM at full size against
the VRAM budget (red when it would not fit), the profile that would run here, and the highlighted preset's
description with the fit planner's plan for the budget at full size (common/plan.py, from the cached
facts), and whether it has a published-scale size (profile=paper, set through `e`). Arrow keys or j/k move, `/` filters, Enter launches, `e` edits overrides, `r` opens the runs
browser, `?` lists every binding.

The YAML facts (name, arch, description) show at once; parameters and VRAM are measured by
`python -m trainers.inspect` in a worker (cached by cockpit.presets_info) and fill in row by row as each
preset is measured; the title says how many are done."""
from __future__ import annotations

from rich.markup import escape
from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.widgets import DataTable, Footer, Input, Static

from cockpit.messages import LaunchRequested, PresetMeasured, PresetsMeasured
from cockpit.presets_info import finetune_summary, merge_infos, preset_stubs, stream_presets_info, vram_fits
from cockpit.screens.base import CockpitScreen
from cockpit.widgets.preset_table import PresetTable
from common.fmt import fmt_bytes, fmt_count
from common.plan import plan_from_facts, plan_summary

COLUMNS = ("preset", "arch", "params full · here", "est. VRAM / budget", "profile here")


def filter_presets(infos: list[dict], query: str) -> list[dict]:
    """Presets whose name, arch, task or description contain every word of `query` (any case); those
    matching by name come first, then by arch or task, then by description only (so `nano` puts nanogpt
    on top even though other descriptions mention nanoGPT)."""
    words = query.lower().split()
    if not words:
        return list(infos)

    def text(i, keys):
        return " ".join(str(i.get(k, "")) for k in keys).lower()

    def rank(i):
        if all(w in text(i, ("name",)) for w in words):
            return 0
        return 1 if all(w in text(i, ("name", "arch", "task")) for w in words) else 2
    hits = [i for i in infos if all(w in text(i, ("name", "arch", "task", "description")) for w in words)]
    return sorted(hits, key=rank)


def preset_cells(info: dict, measuring: bool = False) -> list[str]:
    """[preset, arch, params, est. VRAM / budget, profile here] as text."""
    pending = "…" if measuring else "?"
    params = fmt_count(info["n_params"]) if isinstance(info.get("n_params"), int) else pending
    here = info.get("n_params_here")
    if isinstance(here, int) and here != info.get("n_params"):  # a smaller CPU profile is what runs here
        params += f" · {fmt_count(here)}"
    budget = f"{float(info.get('vram_budget_gb', 12.0)):g} GB"
    if isinstance(info.get("est_vram_bytes"), (int, float)):
        vram = f"{fmt_bytes(info['est_vram_bytes'])} / {budget}"
    else:
        vram = f"{'n/a' if info.get('error') and not measuring else pending} / {budget}"
    return [str(info.get("name")), str(info.get("arch", "?")), params, vram,
            str(info.get("profile_here", pending))]


def plan_text(facts, vram_gb: float) -> str | None:
    """The fit planner's one line for `vram_gb` from a preset's cached facts; None without (usable) facts."""
    if not isinstance(facts, dict):
        return None
    try:
        return plan_summary(plan_from_facts(facts, vram_gb))
    except (KeyError, TypeError, ValueError, IndexError):  # facts from another version of the cache
        return None


class PickerScreen(CockpitScreen):
    HELP_TITLE = "preset picker"
    BINDINGS = [
        Binding("question_mark", "help", "Help", key_display="?"),  # first: the footer may be cut
        Binding("enter", "launch", "Launch", show=False),
        Binding("e", "edit_overrides", "Edit overrides"),
        Binding("slash", "filter", "Filter", key_display="/"),
        Binding("r", "runs", "Runs"),
        Binding("j", "cursor_down", "Down (also ↓)", show=False),
        Binding("k", "cursor_up", "Up (also ↑)", show=False),
        Binding("escape", "clear_filter", "Clear the filter (in the filter: empty it first)", show=False),
        Binding("q", "quit", "Quit"),
    ]
    KEYS_HELP = {"↑/↓, pgup/pgdn, home/end": "move in the table"}

    def __init__(self, infos: list[dict] | None = None):
        super().__init__()
        self.injected = infos
        self.infos: list[dict] = []
        self.shown: list[dict] = []
        self.query_text = ""
        self.measuring = infos is None
        self.progress: tuple[int, int] | None = None   # (measured, of) while measuring
        self.measure_error: str | None = None
        self.overrides: dict[str, list[str]] = {}

    def compose(self) -> ComposeResult:
        with Vertical(id="picker"):
            yield Static(Text.assemble(("cockpit", "bold"), "  pick a preset to train"), id="picker-title")
            yield Input(placeholder="filter presets (name, arch, task, words of the description)", id="filter")
            yield PresetTable(cursor_type="row", zebra_stripes=True, id="presets")
            yield Static("", id="preset-description")
            yield Static("", id="preset-overrides")
        yield Footer(show_command_palette=False)

    def on_mount(self):
        table = self.query_one("#presets", DataTable)
        for c in COLUMNS:
            table.add_column(c, key=c)
        if self.injected is not None:
            self.infos = merge_infos([], self.injected) if not self.injected or "name" in self.injected[0] else []
            self.measuring = False
        else:
            self.infos = preset_stubs()
            self.call_after_refresh(self.measure)   # the first frame does not wait for the worker
        self.refill()
        table.focus()

    @work(thread=True, exclusive=True, group="presets")
    def measure(self):
        """Every preset's facts, each posted as it is measured (a cold cache takes half a minute or more)."""
        try:
            infos = stream_presets_info(lambda info, done, total: self.post_message(PresetMeasured(info, done, total)))
        except Exception as e:  # noqa: BLE001 — the picker still works with the YAML facts
            self.post_message(PresetsMeasured([], f"{type(e).__name__}: {e}"))
            return
        self.post_message(PresetsMeasured(infos))

    def on_preset_measured(self, msg: PresetMeasured):
        self.infos = merge_infos(self.infos, [msg.info])
        self.progress = (msg.done, msg.total)
        self.refill()

    def on_presets_measured(self, msg: PresetsMeasured):
        self.measuring = False
        self.progress = None
        if msg.error:
            self.measure_error = msg.error
        else:
            self.infos = merge_infos(self.infos, msg.infos)
        self.refill()

    def show_title(self):
        """The title, with how far measuring the presets' sizes has come while it runs."""
        title = Text.assemble(("cockpit", "bold"), "  pick a preset to train")
        if self.measuring:
            done, total = self.progress or (0, len(self.infos))
            title.append(f"  · measuring sizes {done}/{total}…", style="dim")
        self.query_one("#picker-title", Static).update(title)

    # --- the table -----------------------------------------------------------------------------------
    def refill(self, keep_highlight: bool = True):
        """Rebuild the rows; the highlighted preset stays highlighted unless the filter changed (then the
        best match, the first row, is)."""
        table = self.query_one("#presets", DataTable)
        keep = self.highlighted_name() if keep_highlight else None
        table.clear()
        self.shown = filter_presets(self.infos, self.query_text)
        for info in self.shown:
            cells = preset_cells(info, self.measuring)
            fits = vram_fits(info)
            vram = Text(cells[3], style={True: "green", False: "bold red", None: "dim"}[fits])
            table.add_row(Text(cells[0], style="bold"), escape(cells[1]), escape(cells[2]), vram, escape(cells[4]),
                          key=info["name"])
        names = [i["name"] for i in self.shown]
        table.move_cursor(row=names.index(keep) if keep in names else 0)
        self.show_title()
        self.show_details()

    def highlighted(self) -> dict | None:
        table = self.query_one("#presets", DataTable)
        if not self.shown or table.cursor_row is None or table.cursor_row >= len(self.shown):
            return None
        return self.shown[max(0, table.cursor_row)]

    def highlighted_name(self) -> str | None:
        info = self.highlighted() if self.is_mounted else None
        return info["name"] if info else None

    def show_details(self):
        desc = self.query_one("#preset-description", Static)
        ov = self.query_one("#preset-overrides", Static)
        info = self.highlighted()
        if info is None:
            desc.border_title = ""
            desc.update(Text("no preset matches the filter; Esc clears it" if self.query_text else "no presets",
                             style="dim"))
            ov.update("")
            return
        desc.border_title = Text(f"{info['name']} · {info.get('arch')} · {info.get('task')}")
        body = Text(" ".join(str(info.get("description") or "(no description)").split()))
        fits = vram_fits(info)
        if fits is False:
            body.append(f"\nDoes not fit the {float(info.get('vram_budget_gb', 12)):g} GB budget at full size "
                        "(estimate); the cpu profile or smaller overrides still run.", style="red")
        budget = float(info.get("vram_budget_gb", 12))
        line = plan_text(info.get("plan_facts"), budget)
        if line:
            body.append(f"\nplan at full size: {line} (estimate; `cockpit plan {info['name']}` for the details)")
        if info.get("has_paper_profile"):
            body.append("\npublished-scale size: e, then profile=paper", style="dim")
        if info.get("finetune_estimates"):
            body.append(f"\nLlama bases, est. VRAM: {finetune_summary(info)}", style="dim")
        if info.get("error") and not self.measuring:
            body.append(f"\nestimate failed: {info['error']}", style="dim")
        if self.measure_error:
            body.append(f"\nmeasuring presets failed: {self.measure_error}", style="dim")
        desc.update(body)
        items = self.overrides.get(info["name"])
        ov.update(Text.assemble(("overrides ", "dim"), (" ".join(items), "bold cyan")) if items else
                  Text("e: edit overrides (k=v) before launching", style="dim"))

    @on(DataTable.RowHighlighted, "#presets")
    def _highlighted(self, _event):
        self.show_details()

    @on(DataTable.RowSelected, "#presets")
    def _selected(self, _event):
        self.action_launch()

    # --- actions -------------------------------------------------------------------------------------
    def action_cursor_down(self):
        self.query_one("#presets", DataTable).action_cursor_down()

    def action_cursor_up(self):
        self.query_one("#presets", DataTable).action_cursor_up()

    def action_launch(self):
        info = self.highlighted()
        if info is not None:
            self.post_message(LaunchRequested(info["name"], list(self.overrides.get(info["name"], []))))

    def action_edit_overrides(self):
        info = self.highlighted()
        if info is None:
            return
        from cockpit.screens.overrides import OverridesScreen

        name = info["name"]

        def done(items):
            if items is not None:
                self.overrides[name] = items
                self.show_details()
        self.app.push_screen(OverridesScreen(name, self.overrides.get(name, [])), done)

    def action_filter(self):
        inp = self.query_one("#filter", Input)
        inp.add_class("-shown")
        inp.focus()

    @on(Input.Changed, "#filter")
    def _filter_changed(self, event: Input.Changed):
        if event.value == "/":   # `/` pressed again in the focused, empty filter: it means "filter", not a slash
            event.input.value = ""
            return
        self.query_text = event.value
        self.refill(keep_highlight=False)

    @on(Input.Submitted, "#filter")
    def _filter_done(self, _event):
        self.query_one("#presets", DataTable).focus()

    def action_clear_filter(self):
        """Esc in the filter with text: empty it (and stay in it). Otherwise: clear the filter, close it, back
        to the table (a filter left behind would keep hiding presets)."""
        inp = self.query_one("#filter", Input)
        if inp.has_focus and inp.value:
            inp.value = ""
            return
        inp.value = ""
        inp.remove_class("-shown")
        self.query_one("#presets", DataTable).focus()

    def action_runs(self):
        self.app.open_runs()
