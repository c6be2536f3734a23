"""The one registry of keys and actions.

Every key the app answers to is declared here once. The registry feeds:
- the `BINDINGS` of the app and of each screen (`bindings(scope)`), so the footer shows them,
- the `?` help screen (`help_rows()`),
- the command palette (`palette_actions()`).

A keymap (Textual's `App.set_keymap`) can rebind any of them by its `id`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from textual.binding import Binding

# Scopes: where a key is live. "app" keys work on the dashboard (and every screen that does
# not shadow them); the others belong to one screen each.
SCOPES = ("app", "inspect", "compare", "confirm", "help", "ratio", "study")
SCOPE_TITLES = {
    "app": "Dashboard",
    "inspect": "Transition / inspection screen",
    "compare": "Comparison screen",
    "confirm": "Confirmation dialogs",
    "help": "This help",
    "ratio": "Hard ratio dialog",
    "study": "Study view (ashem --study)",
}

MAX_STEP_KEYS = 9


@dataclass(frozen=True)
class ActionSpec:
    id: str  # binding id, globally unique ("ashem.pause")
    key: str  # Textual key name(s), comma separated
    action: str  # action string, run on the node that owns the scope
    description: str  # short, for the footer
    scope: str = "app"
    footer: bool = True  # shown in the footer
    footer_compact: bool = True  # also in the footer of a compact (< 100 columns) screen
    palette: bool = False  # offered in the command palette
    help: str = ""  # longer text for the help screen
    key_display: str | None = None
    group: str | None = None  # rows of one group are shown as one line in help
    priority: bool = False

    def binding(self) -> Binding:
        return Binding(
            self.key,
            self.action,
            self.description,
            show=self.footer,
            key_display=self.key_display,
            id=self.id,
            priority=self.priority,
            group=Binding.Group(self.group, compact=True) if self.group else None,
        )


def _step_keys() -> list[ActionSpec]:
    return [
        ActionSpec(
            id=f"ashem.step-{n}",
            key=str(n),
            action=f"open_step({n})",
            description=f"Inspect step {n}",
            footer=False,
            help="Open the inspection screen of timeline step n (also: click the step)",
            group="1…9",
        )
        for n in range(1, MAX_STEP_KEYS + 1)
    ]


ACTIONS: tuple[ActionSpec, ...] = (
    # -- dashboard -------------------------------------------------------------------------
    ActionSpec("ashem.pause", "space", "toggle_pause", "Pause/Resume", palette=True,
               key_display="space",
               help="Pause the run at the next batch boundary, or resume a paused / held run"),
    ActionSpec("ashem.inspect", "i", "inspect_current", "Inspect", palette=True,
               help="Open the inspection screen of the latest transition (or current step)"),
    ActionSpec("ashem.log_y", "l", "toggle_log_y", "Log-y", palette=True,
               help="Toggle logarithmic axes: the PPL charts' y, the confidence histogram's x"),
    ActionSpec("ashem.next_chart", "n", "next_chart", "Chart", palette=True,
               help="Show the next chart (narrow terminals show one chart at a time)"),
    ActionSpec("ashem.x_axis", "x", "cycle_x_axis", "X-axis", palette=True, footer=False,
               help="Plot the PPL charts against the next x-axis: epoch, tokens trained, "
                    "wall time, training MACs"),
    ActionSpec("ashem.compare", "c", "open_compare", "Compare", palette=True,
               footer_compact=False,
               help="Compare runs: PPL against MACs per token and the Pareto frontier"),
    ActionSpec("ashem.export", "e", "export_metrics", "Export", palette=True,
               footer_compact=False,
               help="Write the metrics table as metrics.csv and metrics.json "
                    "(into the run directory; the current directory in replay)"),
    ActionSpec("ashem.screenshot", "s", "screenshot", "SVG", palette=True,
               footer_compact=False,
               help="Save an SVG screenshot (run directory; current directory in replay)"),
    ActionSpec("ashem.help", "question_mark", "show_help", "Help", palette=True,
               key_display="?", help="Show this list of keys"),
    ActionSpec("ashem.quit", "q", "request_quit", "Quit", palette=True,
               help="Quit; while a run is going, asks first and then cancels the run"),
    *_step_keys(),
    # -- inspection screen -----------------------------------------------------------------
    ActionSpec("ashem.inspect.continue", "c", "continue_run", "Continue", scope="inspect",
               help="Resume the held run and return to the dashboard"),
    ActionSpec("ashem.inspect.abort", "a", "abort_run", "Abort run", scope="inspect",
               help="Cancel the run (asks first); the app stays open"),
    ActionSpec("ashem.inspect.back", "escape,b", "back", "Back", scope="inspect",
               key_display="esc",
               help="Back to the dashboard; a held run stays held"),
    ActionSpec("ashem.inspect.ratio-up", "plus,equals_sign", "step_ratio(1)", "Ratio +",
               scope="inspect", key_display="+",
               help="Held at a mining transition: hard ratio + 0.05 (the engine mines again)"),
    ActionSpec("ashem.inspect.ratio-down", "minus", "step_ratio(-1)", "Ratio −",
               scope="inspect", key_display="−",
               help="Held at a mining transition: hard ratio − 0.05"),
    ActionSpec("ashem.inspect.ratio", "r", "type_ratio", "Type ratio", scope="inspect",
               help="Held at a mining transition: type a hard ratio in (0, 1)"),
    ActionSpec("ashem.inspect.prev", "left", "step(-1)", "Prev step", scope="inspect",
               key_display="←", help="Inspect the previous timeline step"),
    ActionSpec("ashem.inspect.next", "right", "step(1)", "Next step", scope="inspect",
               key_display="→", help="Inspect the next timeline step"),
    ActionSpec("ashem.inspect.log", "l", "toggle_log", "Log axis", scope="inspect",
               footer=False,
               help="Toggle a logarithmic axis: the confidence histogram's x, the PPL "
                    "chart's y"),
    # -- comparison screen -----------------------------------------------------------------
    ActionSpec("ashem.compare-zoom", "z", "toggle_zoom", "Zoom", scope="compare",
               help="Toggle the chart's y range: all points / near the Pareto front"),
    ActionSpec("ashem.compare.curves", "v", "toggle_view", "Curves/sweep", scope="compare",
               help="Switch between the sweeps' Pareto chart and the runs' validation PPL "
                    "curves against compute (a study's: mean over seeds, 95 % interval)"),
    ActionSpec("ashem.compare.x_axis", "x", "cycle_x_axis", "X-axis", scope="compare",
               help="The curves against the next x-axis: training MACs, epoch, tokens "
                    "trained, wall time"),
    ActionSpec("ashem.compare.log_y", "l", "toggle_log_y", "Log-y", scope="compare",
               footer=False, help="Toggle a logarithmic y axis on the curves"),
    ActionSpec("ashem.compare.close", "escape,q", "close", "Close", scope="compare",
               key_display="esc/q",
               help="Close the comparison (with ashem --compare: quit)"),
    # -- confirmation dialogs --------------------------------------------------------------
    ActionSpec("ashem.confirm.yes", "y", "answer(True)", "Yes", scope="confirm"),
    ActionSpec("ashem.confirm.no", "n,escape", "answer(False)", "No", scope="confirm",
               key_display="n/esc"),
    # -- hard ratio dialog -----------------------------------------------------------------
    ActionSpec("ashem.ratio.cancel", "escape", "cancel", "Cancel", scope="ratio",
               key_display="esc", help="Close the dialog; the ratio stays (enter sends it)"),
    # -- study view (ashem --study) --------------------------------------------------------
    ActionSpec("ashem.study.open", "o,enter", "open_run", "Open run", scope="study",
               key_display="o/enter", priority=True,
               help="Open the running run's dashboard, attached (the run goes on); q there "
                    "comes back to the study"),
    ActionSpec("ashem.study.quit", "q", "close_study", "Quit", scope="study",
               help="Quit the study view; the study goes on in its own process"),
    # -- help ------------------------------------------------------------------------------
    ActionSpec("ashem.help.close", "escape,question_mark,q", "close", "Close", scope="help",
               key_display="esc"),
)


def specs(scope: str) -> list[ActionSpec]:
    return [a for a in ACTIONS if a.scope == scope]


def bindings(scope: str) -> list[Binding]:
    return [a.binding() for a in specs(scope)]


def footer_extras(scope: str) -> set[str]:
    """The actions of `scope` whose keys a compact screen leaves out of its footer (they
    still work, and `?` lists them)."""
    return {a.action for a in specs(scope) if a.footer and not a.footer_compact}


def palette_actions() -> list[ActionSpec]:
    return [a for a in ACTIONS if a.palette]


def by_id(action_id: str) -> ActionSpec:
    for a in ACTIONS:
        if a.id == action_id:
            return a
    raise KeyError(action_id)


def display_key(spec: ActionSpec) -> str:
    if spec.key_display:
        return spec.key_display
    names = {"question_mark": "?", "escape": "esc", "space": "space"}
    return "/".join(names.get(k.strip(), k.strip()) for k in spec.key.split(","))


def help_rows(scope: str) -> Iterable[tuple[str, str]]:
    """(keys, text) rows for the help screen; a group of keys becomes one row."""
    seen: set[str] = set()
    for spec in specs(scope):
        if spec.group:
            if spec.group in seen:
                continue
            seen.add(spec.group)
            yield spec.group, spec.help or spec.description
        else:
            yield display_key(spec), spec.help or spec.description
