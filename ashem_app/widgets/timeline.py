"""The stage timeline: Stage 1 → Mining → Stage 2 → … → Evaluation.

Built from the run plan (RunStarted.plan; RunStarted.stages for each stage's layers), any
number of stages. Each step shows its number (the key that opens it), its state and its key
figure; clicking a step posts `messages.StepSelected`.
"""
from __future__ import annotations

from rich.text import Text
from textual import events
from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.widgets import Static

from .. import fmt
from ..messages import StepSelected
from ..state import RunView, Step
from . import set_text

ICONS = {"pending": "○", "running": "▶", "held": "⏸", "done": "✓", "failed": "✗",
         "cancelled": "■"}


def step_figure(view: RunView, step: Step, short: bool = False) -> str:
    """The step's key figure, picked from its events. `short`: for a compact screen
    (at most 16 characters for the usual figures: fewer words, counts in k / M)."""
    if step.kind == "stage":
        return _stage_figure(view, step.stage, short)
    if step.kind == "mining":
        th = view.threshold_computed.get(step.stage)
        hard = view.hard_collected.get(step.stage)
        label = "" if short else "thr "
        if th is not None and hard is not None:
            count = fmt.tick(hard.count) if short else fmt.integer(hard.count)
            return f"{label}{fmt.conf(th.threshold)} · {count}"
        if th is not None:
            return f"{label}{fmt.conf(th.threshold)}"
        return "threshold" if short else "threshold, hard tokens"
    if view.evaluation is not None:
        ppl, acc = fmt.ppl(view.evaluation.ppl), fmt.pct(view.evaluation.accuracy)
        return f"{ppl} · {acc}" if short else f"PPL {ppl} · {acc}"
    return "two-stage" if short else "two-stage inference"


def _stage_figure(view: RunView, stage: int, short: bool) -> str:
    ended = view.stage_ended.get(stage)
    if ended is not None:
        return ("best " if short else "best PPL ") + fmt.ppl(ended.best_val_ppl)
    last = view.last_epoch(stage)
    started = view.stage_started.get(stage)
    if last is not None:
        epoch = f"e{last.epoch}" if short else f"ep {last.epoch}/{view.max_epochs(stage)}"
        return f"{epoch} · {fmt.ppl(last.val_ppl)}"
    if started is not None:
        layers = f"{started.layers} layers"
        return layers if short else f"{layers} · ep 1/{started.max_epochs}"
    plan = [p for p in view.stage_plans if p.stage == stage]
    return f"{plan[0].layers} layers" if plan else ""


class StepBox(Static):
    """One timeline step; its CSS classes say its state (-done, -running, -held, …)."""

    def __init__(self, step: Step, number: int) -> None:
        super().__init__(classes=f"step step-{step.id}")
        self.step = step
        self.number = number
        self.border_title = f"{number} {step.label}"

    def show(self, view: RunView, short: bool = False) -> None:
        state = view.step_state(self.step)
        if getattr(self, "_state", None) != state:
            self._state = state
            for s in ICONS:
                self.set_class(s == state, f"-{s}")
        title = f"{self.number} {ICONS[state]} {self.step.label}"
        if self.border_title != title:
            self.border_title = title
        set_text(self, Text(step_figure(view, self.step, short), overflow="ellipsis",
                            no_wrap=True))

    def on_click(self, event: events.Click) -> None:
        event.stop()
        self.post_message(StepSelected(self.step.id))


class Timeline(Horizontal):
    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self._ids: tuple[str, ...] = ()

    def show(self, view: RunView, short: bool = False) -> None:
        """`short`: the steps' short figures (a compact screen)."""
        steps = view.steps()
        ids = tuple(s.id for s in steps)
        if ids != self._ids:
            self._ids = ids
            self.remove_children()
            widgets = []
            for n, step in enumerate(steps, start=1):
                if n > 1:
                    widgets.append(Static("→", classes="arrow"))
                widgets.append(StepBox(step, n))
            self.mount_all(widgets)
            for w in widgets:
                if isinstance(w, StepBox):
                    w.show(view, short)
            return
        for box in self.query(StepBox):
            box.show(view, short)

    def compose(self) -> ComposeResult:
        return iter(())
