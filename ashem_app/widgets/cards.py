"""Metric cards: one small box per figure, each a picked event field."""
from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Grid
from textual.widgets import Static

from .. import fmt
from ..state import RunView
from . import set_text

CARDS = (  # id, title, title on a compact screen (one line per card, at most 9 characters)
    ("val-ppl", "Val PPL", "Val PPL"),
    ("val-acc", "Val accuracy", "Val acc"),
    ("train-ppl", "Train PPL", "Train PPL"),
    ("hard-ppl", "Hard PPL", "Hard PPL"),
    ("threshold", "Threshold", "Threshold"),
    ("hard-tokens", "Hard tokens", "Hard tok"),
    ("routing", "Shallow / deep", "Shal/deep"),
    ("cost", "Compute cost", "Cost"),
)


def card_values(view: RunView) -> dict[str, tuple[str, str]]:
    """card id -> (main value, sub line). Exposed for tests and export."""
    return {**_epoch_cards(view), **_mining_cards(view), **_routing_cards(view)}


def _epoch_cards(view: RunView) -> dict[str, tuple[str, str]]:
    """Val PPL, val accuracy and train PPL: the latest epoch, and the best of its stage."""
    last = view.last_epoch()
    if last is None:
        return {"val-ppl": (fmt.DASH, ""), "val-acc": (fmt.DASH, ""),
                "train-ppl": (fmt.DASH, "")}
    best = view.best_epoch(last.stage)
    ended = view.stage_ended.get(last.stage)
    where = f"s{last.stage} e{best.epoch}" if best else ""
    best_acc = ended.best_val_acc if ended else (best.val_acc if best else None)
    return {
        "val-ppl": (fmt.ppl(last.val_ppl),
                    f"best {fmt.ppl(last.best_val_ppl)} {where}".rstrip()),
        "val-acc": (fmt.pct(last.val_acc, 2), f"at best {fmt.pct(best_acc, 2)}"),
        "train-ppl": (fmt.ppl(last.train_ppl),
                      f"s{last.stage} e{last.epoch} · {fmt.duration(last.seconds)}"),
    }


def _mining_cards(view: RunView) -> dict[str, tuple[str, str]]:
    """Hard PPL, threshold and hard tokens: the latest mining and hard-token epoch."""
    mining = view.last_mining_stage
    hard = view.hard_collected.get(mining) if mining is not None else None
    th = view.threshold_computed.get(mining) if mining is not None else None
    last_hard = next((e for e in reversed(view.epochs) if e.hard_ppl is not None), None)
    out: dict[str, tuple[str, str]] = {"hard-ppl": (fmt.DASH, ""), "threshold": (fmt.DASH, ""),
                                       "hard-tokens": (fmt.DASH, "")}
    if last_hard is not None:
        ref = f"mined {fmt.ppl(hard.hard_ppl)}" if hard else ""
        out["hard-ppl"] = (fmt.ppl(last_hard.hard_ppl), f"s{last_hard.stage} e"
                           f"{last_hard.epoch} {ref}".rstrip())
    elif hard is not None:
        out["hard-ppl"] = (fmt.ppl(hard.hard_ppl), f"stage {hard.stage} exit")
    if th is not None:
        out["threshold"] = (fmt.conf(th.threshold),
                            f"q {th.target_ratio:g} · layer {th.exit_layer}")
    if hard is not None:
        out["hard-tokens"] = (f"{fmt.integer(hard.count)} / {fmt.integer(hard.total)}",
                              f"{fmt.pct(hard.ratio)} · "
                              f"conf {fmt.conf(hard.mean_confidence)}")
    return out


def _routing_cards(view: RunView) -> dict[str, tuple[str, str]]:
    """Shallow / deep and compute cost: the final evaluation, or the latest routed epoch."""
    ev = view.evaluation
    if ev is not None:
        return {"routing": (f"{fmt.pct(ev.shallow_ratio)} / {fmt.pct(ev.deep_ratio)}",
                            f"final · {ev.split}"),
                "cost": (fmt.pct(ev.compute_cost, 2), f"honest {fmt.pct(ev.honest_cost, 1)}")}
    routed = next((e for e in reversed(view.epochs) if e.shallow_ratio is not None), None)
    if routed is not None:
        return {"routing": (f"{fmt.pct(routed.shallow_ratio)} shallow",
                            f"s{routed.stage} e{routed.epoch} val"),
                "cost": (fmt.DASH, "after evaluation")}
    return {"routing": (fmt.DASH, ""), "cost": (fmt.DASH, "")}


class MetricCard(Static):
    """A box with its title in the border; on a compact screen one line (the CSS drops the
    border): short title, value, sub line."""

    def __init__(self, card_id: str, title: str, short_title: str) -> None:
        super().__init__(id=f"card-{card_id}", classes="card")
        self.border_title = title
        self.short_title = short_title

    def set_value(self, value: str, sub: str, compact: bool = False) -> None:
        if compact:
            text = Text(f"{self.short_title:<10}", style="dim", overflow="ellipsis",
                        no_wrap=True)
            text.append(value, style="bold")
            text.append(f"  {sub}", style="dim")
        else:
            text = Text(value, style="bold", overflow="ellipsis", no_wrap=True)
            text.append("\n")
            text.append(sub or " ", style="dim")
        set_text(self, text)


class MetricCards(Grid):
    def compose(self) -> ComposeResult:
        for card_id, title, short_title in CARDS:
            yield MetricCard(card_id, title, short_title)

    def show(self, view: RunView, compact: bool = False) -> None:
        values = card_values(view)
        for card_id, _, _ in CARDS:
            value, sub = values[card_id]
            self.query_one(f"#card-{card_id}", MetricCard).set_value(value, sub, compact)
