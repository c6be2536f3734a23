"""One log line per event (pure: event -> rich Text, or None for events not logged)."""
from __future__ import annotations

from dataclasses import replace
from typing import Optional

from rich.text import Text

from ashem_engine.events import (
    BatchProgress, CommandIgnored, CommandObeyed, EpochEnded, Evaluated, Event,
    HardExamplesCollected, Log, Paused, Resumed, RunCancelled, RunFailed, RunFinished,
    RunStarted, SettingChanged, StageEnded, StageStarted, SweepComputed, ThresholdComputed,
)
from ashem_engine.sinks import dispatch

from . import fmt

LEVEL_STYLE = {"info": "", "warning": "yellow", "error": "bold red"}


def describe(event: Event, clock_offset: float = 0.0) -> Optional[Text]:
    """`clock_offset`: the seconds earlier attempts of a resumed run ran (its
    RunStarted.seconds_before), added to the event's `t` and to the run's total seconds
    so that the log shows one run clock over every attempt."""
    body = _body(_on_run_clock(event, clock_offset))
    if body is None:
        return None
    if isinstance(body, str):
        body = Text(body)
    line = Text(fmt.stamp(clock_offset + event.t) + "  ", style="dim")
    line.append_text(body)
    return line


Body = Optional[Text | str]


def _on_run_clock(event: Event, clock_offset: float) -> Event:
    """A run's end counts its `seconds` from this attempt's start: add the earlier ones."""
    if clock_offset and isinstance(event, (RunFinished, RunCancelled)):
        return replace(event, seconds=clock_offset + event.seconds)
    return event


def _body(e: Event) -> Body:
    return dispatch(_LINES, e, default=e.kind)


class _Lines:
    """One method per kind of event logged, found by `dispatch`; a kind without one is logged
    by its name, BatchProgress (the progress bar's) not at all."""

    def on_BatchProgress(self, e: BatchProgress) -> Body:
        return None

    def on_RunStarted(self, e: RunStarted) -> Body:
        verb = "resumed" if e.resumed else "started"
        return (f"run {e.name!r} {verb} on {e.device} ({e.threads} threads) · vocab "
                f"{fmt.integer(e.vocab_size)} · train {fmt.integer(e.train_tokens)} / val "
                f"{fmt.integer(e.val_tokens)} tokens · {e.run_dir}")

    def on_StageStarted(self, e: StageStarted) -> Body:
        return (f"stage {e.stage} started: {e.layers} layers, "
                f"{fmt.integer(e.trainable_params)} of {fmt.integer(e.total_params)} params "
                f"trainable, lr {e.lr:g}, patience {e.patience}, {e.batches} batches/epoch"
                + (f" · {e.scope()}" if e.scope() else ""))

    def on_EpochEnded(self, e: EpochEnded) -> Body:
        t = Text(f"stage {e.stage} epoch {e.epoch}: train PPL {fmt.ppl(e.train_ppl)}  "
                 f"val PPL {fmt.ppl(e.val_ppl)}  acc {fmt.pct(e.val_acc, 2)}")
        if e.hard_ppl is not None:
            t.append(f"  hard {fmt.ppl(e.hard_ppl)}")
        if e.shallow_ratio is not None:
            t.append(f"  shallow {fmt.pct(e.shallow_ratio)}")
        if e.improved:
            t.append("  ✓ best", style="green")
        else:
            t.append(f"  patience {e.patience_counter}/{e.patience}", style="yellow")
        return t

    def on_StageEnded(self, e: StageEnded) -> Body:
        how = "stopped early" if e.stopped_early else "ran all epochs"
        spent = "" if e.training_macs is None else f" · trained {fmt.macs(e.training_macs)}"
        if e.selection_macs is not None:
            spent += f", selection {fmt.macs(e.selection_macs)}"
        return Text(f"stage {e.stage} done: {e.epochs} epochs, {how}; best epoch "
                    f"{e.best_epoch} val PPL {fmt.ppl(e.best_val_ppl)} · "
                    f"{fmt.duration(e.seconds)}{spent}", style="bold")

    def on_ThresholdComputed(self, e: ThresholdComputed) -> Body:
        return (("steered: " if e.steered else "") + f"threshold {fmt.conf(e.threshold)} "
                f"(quantile {e.target_ratio:g} of {fmt.integer(e.tokens)} {e.split} "
                f"confidences at layer {e.exit_layer})")

    def on_HardExamplesCollected(self, e: HardExamplesCollected) -> Body:
        return (f"hard tokens: {fmt.integer(e.count)} of {fmt.integer(e.total)} "
                f"({fmt.pct(e.ratio)}), mean confidence {fmt.conf(e.mean_confidence)}, "
                f"hard PPL {fmt.ppl(e.hard_ppl)}")

    def on_Evaluated(self, e: Evaluated) -> Body:
        ratios = " / ".join(fmt.pct(r) for r in e.exit_ratios)
        return Text(f"evaluation ({e.split}): PPL {fmt.ppl(e.ppl)} · acc "
                    f"{fmt.pct(e.accuracy, 2)} · exits {ratios} · compute cost "
                    f"{fmt.pct(e.compute_cost, 2)} · honest cost {fmt.pct(e.honest_cost, 1)}",
                    style="bold")

    def on_SweepComputed(self, e: SweepComputed) -> Body:
        names = ", ".join(str(s.get("name", "?")) for s in e.series)
        return (f"threshold sweep ({e.split}, {fmt.integer(e.tokens)} tokens): {names} · "
                "c: compare")

    def on_Paused(self, e: Paused) -> Body:
        if e.reason == "pause_at":
            return Text(f"holding at boundary {e.boundary} ({e.where})", style="cyan")
        return Text(f"paused at {e.where}", style="cyan")

    def on_Resumed(self, e: Resumed) -> Body:
        return Text(f"resumed ({e.where})", style="cyan")

    def on_CommandObeyed(self, e: CommandObeyed) -> Body:
        value = f" {e.value:g}" if e.value is not None else ""
        origin = f" (#{e.seq} from {e.writer})" if e.seq is not None else ""
        return Text(f"command {e.command}{value}{origin} at {e.where}", style="cyan")

    def on_CommandIgnored(self, e: CommandIgnored) -> Body:
        what = f" {e.command}" if e.command else ""
        return Text(f"warning: command{what} ignored: {e.reason}", style="yellow")

    def on_SettingChanged(self, e: SettingChanged) -> Body:
        return Text(f"setting {e.key} = {e.value!r} (was {e.previous!r}); settings.json rewritten",
                    style="cyan")

    def on_Log(self, e: Log) -> Body:
        return Text(f"{e.level}: {e.message}", style=LEVEL_STYLE.get(e.level, ""))

    def on_RunFinished(self, e: RunFinished) -> Body:
        return Text(f"run finished in {fmt.duration(e.seconds)} · {e.run_dir}",
                    style="bold green")

    def on_RunCancelled(self, e: RunCancelled) -> Body:
        return Text(f"run cancelled at {e.where} after {fmt.duration(e.seconds)}",
                    style="bold yellow")

    def on_RunFailed(self, e: RunFailed) -> Body:
        return Text(f"run FAILED ({e.error_kind}) at {e.where}: {e.message}", style="bold red")


_LINES = _Lines()
