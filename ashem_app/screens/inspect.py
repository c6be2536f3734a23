"""The transition / inspection screen of one timeline step.

- a stage step: the stage summary and its epoch table;
- a mining step: the summary of the stage mined, the confidence histogram with the
  threshold, the hard-token figures, the most frequent hard words and hard tokens in context;
- evaluation: the last stage's summary and the final two-stage evaluation.

Opened by itself when a live run holds at a boundary (Paused, reason "pause_at"), or from the
timeline (number keys, click). Keys: c continue (resume), a abort (cancel the run, keep the
app), esc back to the dashboard (the run stays held), ←/→ other steps; held at a mining
transition, +/− step the hard ratio by 0.05 and r asks for a typed one (the engine mines
again and its new figures replace these). Continue, abort, steering and the other steps are
messages to the app (messages.py).
"""
from __future__ import annotations

from typing import Optional

from rich.table import Table
from rich.text import Text
from textual import events
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import Screen
from textual.widgets import Static

from .. import fmt, keys
from ..messages import AbortRun, ContinueRun, SteerRun, StepSelected
from ..state import RunView, Step
from ..widgets.charts import ConfidenceChart, PplChart, RoutingChart, log_axis, ppl_values
from ..widgets.keyfooter import KeyFooter
from .confirm import ConfirmScreen
from .dashboard import COMPACT_WIDTH
from .ratio import RatioScreen

RATIO_STEP = 0.05


def _kv_table(rows: list[tuple[str, str]]) -> Table:
    table = Table(box=None, show_header=False, padding=(0, 1), expand=False)
    table.add_column(style="dim", no_wrap=True)
    table.add_column(style="bold", no_wrap=True)
    for k, v in rows:
        table.add_row(k, v)
    return table


def stage_summary(view: RunView, stage: int) -> Table:
    started = view.stage_started.get(stage)
    ended = view.stage_ended.get(stage)
    last = view.last_epoch(stage)
    best = view.best_epoch(stage)
    rows: list[tuple[str, str]] = []
    if started:
        rows += [("layers", str(started.layers)),
                 ("trainable", f"{fmt.integer(started.trainable_params)} / "
                               f"{fmt.integer(started.total_params)}"),
                 ("lr · patience", f"{started.lr:g} · {started.patience}")]
    if ended:
        rows += [("epochs", f"{ended.epochs} / {view.max_epochs(stage)}"),
                 ("best epoch", str(ended.best_epoch)),
                 ("best val PPL", fmt.ppl(ended.best_val_ppl)),
                 ("best val acc", fmt.pct(ended.best_val_acc, 2)),
                 ("stopped early", "yes" if ended.stopped_early else "no (max epochs)"),
                 ("time", fmt.duration(ended.seconds))]
        if ended.best_hard_ppl is not None:
            rows.append(("best hard PPL", fmt.ppl(ended.best_hard_ppl)))
        if ended.training_macs is not None:
            rows.append(("training", f"{fmt.macs(ended.training_macs)} · selection "
                                      f"{fmt.macs(ended.selection_macs)}"))
    elif last:
        rows += [("epochs", f"{last.epoch} / {view.max_epochs(stage)} (running)"),
                 ("best epoch", str(last.best_epoch)),
                 ("best val PPL", fmt.ppl(last.best_val_ppl)),
                 ("best val acc", fmt.pct(best.val_acc, 2) if best else fmt.DASH),
                 ("patience", f"{last.patience_counter} / {last.patience}")]
    elif started:
        rows.append(("epochs", f"0 / {started.max_epochs} (running)"))
    else:
        rows.append(("", "not started"))
    return _kv_table(rows)


def epochs_table(view: RunView, stage: int) -> Table:
    eps = view.stage_epochs(stage)
    has_hard = any(e.hard_ppl is not None for e in eps)
    has_routed = any(e.shallow_ratio is not None for e in eps)
    table = Table(box=None, padding=(0, 1), header_style="bold dim", expand=False)
    table.add_column("ep", justify="right")
    table.add_column("train PPL", justify="right")
    table.add_column("val PPL", justify="right")
    table.add_column("acc", justify="right")
    if has_hard:
        table.add_column("hard PPL", justify="right")
    if has_routed:
        table.add_column("shallow", justify="right")
    table.add_column("", no_wrap=True)
    best = eps[-1].best_epoch if eps else None
    for e in eps:
        row = [str(e.epoch), fmt.ppl(e.train_ppl), fmt.ppl(e.val_ppl), fmt.pct(e.val_acc, 2)]
        if has_hard:
            row.append(fmt.ppl(e.hard_ppl))
        if has_routed:
            row.append(fmt.pct(e.shallow_ratio))
        row.append("★ best" if e.epoch == best else ("✓" if e.improved else ""))
        table.add_row(*row, style="bold green" if e.epoch == best else "")
    return table


def hard_figures(view: RunView, stage: int):
    th = view.threshold_computed.get(stage)
    hard = view.hard_collected.get(stage)
    rows: list[tuple[str, str]] = []
    if th:
        rows += [("threshold", fmt.conf(th.threshold)),
                 ("quantile", f"{th.target_ratio:g}" + (" steered" if th.steered else "")),
                 ("measured on", f"{fmt.integer(th.tokens)} {th.split}"),
                 ("exit layer", str(th.exit_layer))]
    if hard:
        rows += [("hard tokens", f"{fmt.integer(hard.count)} / {fmt.integer(hard.total)}"),
                 ("ratio", fmt.pct(hard.ratio)),
                 ("mean confidence", fmt.conf(hard.mean_confidence)),
                 (f"stage {stage} hard PPL", fmt.ppl(hard.hard_ppl))]
        if hard.selection_macs is not None:  # of it, the stored states' part is training's
            states = f" · states {fmt.macs(hard.state_macs)} (training)" \
                if hard.state_macs else ""
            rows.append(("mining pass", fmt.macs(hard.selection_macs) + states))
    if not rows:
        rows.append(("", "mining not done yet"))
    return _kv_table(rows)


def top_words(view: RunView, stage: int, limit: int = 12) -> Table:
    hard = view.hard_collected.get(stage)
    table = Table(box=None, padding=(0, 1), header_style="bold dim", expand=False)
    table.add_column("hard word")
    table.add_column("count", justify="right")
    for word, count in (hard.top_words if hard else [])[:limit]:
        table.add_row(str(word), fmt.integer(count))
    return table


def examples(view: RunView, stage: int, limit: int = 6) -> Text:
    hard = view.hard_collected.get(stage)
    text = Text()
    for ex in (hard.examples if hard else [])[:limit]:
        context = " ".join(str(w) for w in ex.get("context", []))
        text.append("… " + context + " ", style="dim")
        text.append(f"[{ex.get('target', '?')}]", style="bold reverse")
        conf = ex.get("confidence")
        text.append(f"  conf {fmt.conf(conf)}\n" if conf is not None else "\n", style="yellow")
    if not text.plain:
        text.append("no examples", style="dim")
    return text


def evaluation_figures(view: RunView) -> Table:
    ev = view.evaluation
    if ev is None:
        return _kv_table([("", "not evaluated yet")])
    rows = [("split", f"{ev.split} · {fmt.integer(ev.tokens)} tokens"),
            ("accuracy", fmt.pct(ev.accuracy, 2)),
            ("PPL", fmt.ppl(ev.ppl))]
    for layer, ratio in zip(ev.exit_layers, ev.exit_ratios):
        rows.append((f"exit @ layer {layer}", fmt.pct(ratio)))
    rows += [("shallow / deep", f"{fmt.pct(ev.shallow_ratio)} / {fmt.pct(ev.deep_ratio)}"),
             ("compute cost", fmt.pct(ev.compute_cost, 2)),
             ("honest cost", fmt.pct(ev.honest_cost, 1)),
             ("thresholds", ", ".join(fmt.conf(t) for t in ev.thresholds) or fmt.DASH)]
    return _kv_table(rows + run_compute(view))


def run_compute(view: RunView) -> list[tuple[str, str]]:
    """The finished run's MACs as its summary charges them (summary.json compute_macs)."""
    spent = (view.finished.summary.get("compute_macs") or {}) if view.finished else {}
    if spent.get("total") is None:
        return []
    return [(f"run {key}", fmt.macs(spent[key])) for key in ("training", "selection", "total")]


def _section(title: str, body, classes: str = "", id: Optional[str] = None) -> Static:
    widget = Static(body, classes=f"section {classes}".strip(), id=id)
    widget.border_title = title
    return widget


class InspectScreen(Screen[None]):
    """`InspectScreen(step_id, view, live)`: the step of `view` (`show_view` shows a newer
    one); `live`: the run can be continued and aborted from here."""

    BINDINGS = keys.bindings("inspect")

    def __init__(self, step_id: str, view: RunView, live: bool) -> None:
        super().__init__(classes="inspect")
        self.step_id = step_id
        self.view = view
        self.live = live
        self.asked: Optional[float] = None  # a hard ratio sent, until the engine reports it
        self.log_choice: Optional[bool] = None  # l: log axes (None: each chart's default)

    @property
    def step(self) -> Step:
        step = self.view.step(self.step_id)
        return step or Step(self.step_id, "evaluation", None, self.step_id)

    def compose(self) -> ComposeResult:
        step = self.step
        with Vertical(id="inspect-box") as box:
            box.border_title = self._title()
            yield Static(id="inspect-status")
            with VerticalScroll(id="inspect-body"):
                if step.kind == "stage":
                    yield from self._stage_sections(step)
                elif step.kind == "mining":
                    yield from self._mining_sections(step)
                else:
                    yield from self._evaluation_sections()
        # compact: c / a / esc / ? / q; space (pause) is the dashboard's, c resumes here
        yield KeyFooter(compact=True, extra=("toggle_pause",))

    def on_resize(self, event: events.Resize) -> None:
        """Below COMPACT_WIDTH columns (80 x 24) the rows marked -stack are stacked."""
        self.set_class(event.size.width < COMPACT_WIDTH, "-compact")

    @staticmethod
    def _stage_sections(step: Step) -> ComposeResult:
        with Horizontal(classes="inspect-row"):
            yield _section(f"Stage {step.stage} summary", "", id="stage-summary",
                           classes="narrow")
            yield PplChart(id="inspect-ppl", classes="inspect-chart")
        yield _section(f"Stage {step.stage} epochs", "", id="stage-epochs")

    @staticmethod
    def _mining_sections(step: Step) -> ComposeResult:
        with Horizontal(classes="inspect-row"):
            yield _section(f"Stage {step.stage} summary", "", id="stage-summary",
                           classes="narrow")
            yield ConfidenceChart(stage=step.stage, id="inspect-confidence",
                                  classes="inspect-chart")
        with Horizontal(classes="inspect-row -stack"):
            yield _section("Hard tokens", "", id="hard-figures", classes="narrow")
            yield _section("Hard words", "", id="top-words", classes="narrow")
            yield _section("Hard tokens in context", "", id="hard-examples", classes="wide")

    def _evaluation_sections(self) -> ComposeResult:
        last = self.view.stages[-1] if self.view.stages else 1
        with Horizontal(classes="inspect-row -stack"):
            yield _section("Final evaluation", "", id="evaluation", classes="narrow")
            yield _section(f"Stage {last} summary", "", id="stage-summary", classes="narrow")
        yield RoutingChart(id="inspect-routing", classes="inspect-chart")

    def on_mount(self) -> None:
        self.show_view(self.view)

    def _title(self) -> str:
        step = self.step
        n = next((i for i, s in enumerate(self.view.steps(), start=1) if s.id == step.id),
                 "?")
        what = {"stage": f"Stage {step.stage}", "mining": f"Mining after stage {step.stage}",
                "evaluation": "Evaluation"}.get(step.kind, step.label)
        return f" {n} · {what} "

    def _status(self) -> Text:
        view = self.view
        if self.steerable:
            text = Text(f"⏸ Holding at {self.step_id}. c: continue · a: abort · +/−: hard "
                        "ratio ±0.05 · r: type it · esc: back", style="bold yellow")
            if self.asked is not None:
                text.append(f"  asked for {self.asked:g}…", style="bold cyan")
            return text
        if view.held_at == self.step_id and self.live:
            return Text(f"⏸ The run is holding at boundary {self.step_id}. "
                        "c: continue · a: abort the run · esc: back (stays held)",
                        style="bold yellow")
        held_at = view.hold_clock(self.step_id)
        state = view.step_state(self.step)
        text = Text(f"step {state}", style="bold")
        if held_at is not None:
            text.append(f" · the run held here at {fmt.duration(held_at)}", style="dim")
        text.append(f" · run {view.status}", style="dim")
        if not self.live:
            text.append(" · replay", style="bold blue")
        return text

    def show_view(self, view: RunView) -> None:
        self.view = view
        if self.asked is not None and self._ratio() == self.asked:
            self.asked = None  # the engine has mined at it
        step = self.step
        self.query_one("#inspect-box").border_title = self._title()
        self.query_one("#inspect-status", Static).update(self._status())
        stage = step.stage if step.stage is not None else (view.stages[-1] if view.stages
                                                           else 1)
        self._set("#stage-summary", lambda: stage_summary(view, stage))
        self._set("#stage-epochs", lambda: epochs_table(view, stage))
        self._set("#hard-figures", lambda: hard_figures(view, stage))
        self._set("#top-words", lambda: top_words(view, stage))
        self._set("#hard-examples", lambda: examples(view, stage))
        self._set("#evaluation", lambda: evaluation_figures(view))
        self._show_charts()
        self.refresh_bindings()

    def _show_charts(self) -> None:
        log = self.log_choice
        for chart in self.query(".inspect-chart"):
            chart.show(self.view, log_y=log, log_x=log)  # type: ignore[attr-defined]

    def _set(self, selector: str, build) -> None:
        for widget in self.query(selector):
            if isinstance(widget, Static):
                widget.update(build())

    # -- actions ---------------------------------------------------------------------------
    def check_action(self, action: str, parameters: tuple) -> Optional[bool]:
        if action == "continue_run":
            return True if self.live and self.view.status == "paused" else None
        if action == "abort_run":
            return True if self.live and not self.view.terminal else None
        if action in ("step_ratio", "type_ratio"):
            return self.steerable  # shown only where it applies
        return True

    @property
    def steerable(self) -> bool:
        """Held at this mining transition, in a run we steer: the hard ratio can change."""
        return (self.live and self.step.steerable
                and self.view.held_at == self.step_id)

    def _ratio(self) -> Optional[float]:
        th = self.view.threshold_computed.get(self.step.stage)
        return th.target_ratio if th else None

    def action_step_ratio(self, delta: int) -> None:
        base = self.asked if self.asked is not None else self._ratio()
        ratio = round((base or 0.0) + delta * RATIO_STEP, 4)
        if base is None or not 0 < ratio < 1:
            self.app.bell()
            return
        self._ask(ratio)

    def action_type_ratio(self) -> None:
        current = self.asked if self.asked is not None else self._ratio()
        self.app.push_screen(RatioScreen(current or 0.5, self.step.stage or 1),
                             lambda ratio: self._ask(ratio) if ratio is not None else None)

    def _ask(self, ratio: float) -> None:
        self.asked = ratio
        self.post_message(SteerRun(ratio))
        self.query_one("#inspect-status", Static).update(self._status())

    def action_continue_run(self) -> None:
        self.post_message(ContinueRun())
        self.dismiss(None)

    def action_abort_run(self) -> None:
        def answer(yes: Optional[bool]) -> None:
            if yes:
                self.post_message(AbortRun())
                self.dismiss(None)

        self.app.push_screen(ConfirmScreen("Abort the run?",
                                           "The run is cancelled at the next batch boundary; "
                                           "the app stays open.", yes="Abort", no="Keep"),
                             answer)

    def action_back(self) -> None:
        self.dismiss(None)

    def action_toggle_log(self) -> None:
        """The other axis (log / linear) than the histogram's, or the PPL chart's, now."""
        for confidence in self.query(ConfidenceChart):
            self.log_choice = not confidence.log_shown(self.view, self.log_choice)
            break
        else:
            self.log_choice = not log_axis(self.log_choice, ppl_values(self.view))
        self._show_charts()

    def action_step(self, delta: int) -> None:
        ids = [s.id for s in self.view.steps() if self.view.has_detail(s)]
        if self.step_id not in ids:
            return
        i = ids.index(self.step_id) + delta
        if 0 <= i < len(ids):
            self.post_message(StepSelected(ids[i]))
