"""Metric cards: one small box per figure, each a picked event field."""
from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Grid
from textual.widgets import Static

from .. import fmt
from ..state import RunView
from . import set_text

CARDS = (
    ("val-ppl", "Val PPL"),
    ("val-acc", "Val accuracy"),
    ("train-ppl", "Train PPL"),
    ("hard-ppl", "Hard PPL"),
    ("threshold", "Threshold"),
    ("hard-tokens", "Hard tokens"),
    ("routing", "Shallow / deep"),
    ("cost", "Compute cost"),
)


def card_values(view: RunView) -> dict[str, tuple[str, str]]:
    """card id -> (main value, sub line). Exposed for tests and export."""
    out: dict[str, tuple[str, str]] = {}
    last = view.last_epoch()
    stage = last.stage if last else None
    best = view.best_epoch(stage) if stage is not None else None
    ended = view.stage_ended.get(stage) if stage is not None else None
    where = f"s{stage} e{best.epoch}" if best else ""

    if last is None:
        out["val-ppl"] = (fmt.DASH, "")
        out["val-acc"] = (fmt.DASH, "")
        out["train-ppl"] = (fmt.DASH, "")
    else:
        out["val-ppl"] = (fmt.ppl(last.val_ppl),
                          f"best {fmt.ppl(last.best_val_ppl)} {where}".rstrip())
        best_acc = ended.best_val_acc if ended else (best.val_acc if best else None)
        out["val-acc"] = (fmt.pct(last.val_acc, 2), f"at best {fmt.pct(best_acc, 2)}")
        out["train-ppl"] = (fmt.ppl(last.train_ppl),
                            f"s{last.stage} e{last.epoch} · {fmt.duration(last.seconds)}")

    mining = view.last_mining_stage
    hard = view.hard_collected.get(mining) if mining is not None else None
    th = view.threshold_computed.get(mining) if mining is not None else None
    last_hard = next((e for e in reversed(view.epochs) if e.hard_ppl is not None), None)
    if last_hard is not None:
        ref = f"mined {fmt.ppl(hard.hard_ppl)}" if hard else ""
        out["hard-ppl"] = (fmt.ppl(last_hard.hard_ppl), f"s{last_hard.stage} e"
                           f"{last_hard.epoch} {ref}".rstrip())
    elif hard is not None:
        out["hard-ppl"] = (fmt.ppl(hard.hard_ppl), f"stage {hard.stage} exit")
    else:
        out["hard-ppl"] = (fmt.DASH, "")

    if th is not None:
        out["threshold"] = (fmt.conf(th.threshold),
                            f"q {th.target_ratio:g} · layer {th.exit_layer}")
    else:
        out["threshold"] = (fmt.DASH, "")
    if hard is not None:
        out["hard-tokens"] = (f"{fmt.integer(hard.count)} / {fmt.integer(hard.total)}",
                              f"{fmt.pct(hard.ratio)} · conf {fmt.conf(hard.mean_confidence)}")
    else:
        out["hard-tokens"] = (fmt.DASH, "")

    ev = view.evaluation
    last_routed = next((e for e in reversed(view.epochs) if e.shallow_ratio is not None), None)
    if ev is not None:
        out["routing"] = (f"{fmt.pct(ev.shallow_ratio)} / {fmt.pct(ev.deep_ratio)}",
                          f"final · {ev.split}")
        out["cost"] = (fmt.pct(ev.compute_cost, 2), f"honest {fmt.pct(ev.honest_cost, 1)}")
    elif last_routed is not None:
        out["routing"] = (f"{fmt.pct(last_routed.shallow_ratio)} shallow",
                          f"s{last_routed.stage} e{last_routed.epoch} val")
        out["cost"] = (fmt.DASH, "after evaluation")
    else:
        out["routing"] = (fmt.DASH, "")
        out["cost"] = (fmt.DASH, "")
    return out


class MetricCard(Static):
    def __init__(self, card_id: str, title: str) -> None:
        super().__init__(id=f"card-{card_id}", classes="card")
        self.border_title = title

    def set_value(self, value: str, sub: str) -> None:
        text = Text(value, style="bold", overflow="ellipsis", no_wrap=True)
        text.append("\n")
        text.append(sub or " ", style="dim")
        set_text(self, text)


class MetricCards(Grid):
    def compose(self) -> ComposeResult:
        for card_id, title in CARDS:
            yield MetricCard(card_id, title)

    def show(self, view: RunView) -> None:
        values = card_values(view)
        for card_id, _ in CARDS:
            value, sub = values[card_id]
            self.query_one(f"#card-{card_id}", MetricCard).set_value(value, sub)
