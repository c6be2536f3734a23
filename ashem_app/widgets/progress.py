"""Progress of the current epoch, from the latest BatchProgress, plus a one-line status."""
from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.widgets import Static

from .. import fmt
from ..state import RunView
from . import set_text


def status_line(view: RunView, note: str = "") -> Text:
    """What the run is doing now, in words."""
    if view.status == "failed" and view.failed:
        return Text(f"✗ failed ({view.failed.error_kind}) at {view.failed.where}: "
                    f"{view.failed.message}", style="bold red")
    if view.status == "cancelled" and view.cancelled:
        return Text(f"■ cancelled at {view.cancelled.where}", style="bold magenta")
    if view.status == "finished" and view.finished:
        seconds = view.clock_offset + view.finished.seconds  # over every attempt
        return Text(f"✓ finished in {fmt.duration(seconds)} · {view.finished.run_dir}",
                    style="bold cyan")
    if view.status == "paused" and view.pause:
        if view.pause.reason == "pause_at":
            return Text(f"⏸ holding at boundary {view.pause.boundary} ({view.pause.where}) — "
                        "space: continue · i: inspect", style="bold yellow")
        return Text(f"⏸ paused at {view.pause.where} — space: resume", style="bold yellow")
    if note:
        return Text(note, style="italic yellow")
    step = view.current_step()
    if step is None:
        return Text("waiting for the engine…" if view.status == "waiting" else "", style="dim")
    if step.kind == "mining":
        return Text(f"mining hard examples at the stage {step.stage} exit…", style="cyan")
    if step.kind == "evaluation":
        return Text("evaluating two-stage inference…", style="cyan")
    if view.progress is None or view.progress.stage != step.stage:
        return Text(f"stage {step.stage}: starting…", style="cyan")
    last = view.last_epoch(step.stage)
    p = view.progress
    if p.batch >= p.batches and (last is None or last.epoch < p.epoch):
        return Text(f"stage {step.stage}: validating epoch {p.epoch}…", style="cyan")
    return Text(f"stage {step.stage}: training", style="green")


class BatchBar(Static):
    """A one-line bar of batch / batches. (Textual's ProgressBar draws a gradient cell by
    cell, about 5 ms a frame; this one is a single styled Text.) `percent`: the share in
    % after it (a compact screen leaves it out: batch / batches stands next to the bar)."""

    def show(self, done: int, total: int, percent: bool = True) -> None:
        width = max(1, self.size.width - (6 if percent else 0))
        filled = width * done // total if total > 0 else 0
        text = Text()
        text.append("━" * filled, style="bold green")
        text.append("━" * (width - filled), style="grey23")
        if percent:
            text.append(f" {100 * done // total if total > 0 else 0:3d}%")
        set_text(self, text)

    def on_resize(self) -> None:
        last = getattr(self, "_last_args", None)
        if last:
            self._ashem_last = None
            self.show(*last)

    def set(self, done: int, total: int, percent: bool = True) -> None:
        self._last_args = (done, total, percent)
        self.show(done, total, percent)


class ProgressPanel(Vertical):
    def compose(self) -> ComposeResult:
        with Horizontal(id="progress-row"):
            yield Static(id="progress-epoch")
            yield BatchBar(id="progress-bar")
            yield Static(id="progress-stats")
        yield Static(id="progress-status")

    def show(self, view: RunView, note: str = "", compact: bool = False) -> None:
        """`compact`: shorter labels (a compact screen keeps the bar wide)."""
        p = view.progress
        epoch = self.query_one("#progress-epoch", Static)
        stats = self.query_one("#progress-stats", Static)
        bar = self.query_one("#progress-bar", BatchBar)
        if p is None:
            set_text(epoch, Text("epoch –", style="dim"))
            set_text(stats, "")
            bar.set(0, 0, not compact)
        else:
            set_text(epoch, epoch_label(p.stage, p.epoch, view.max_epochs(p.stage), compact))
            bar.set(p.batch, p.batches, not compact)
            set_text(stats, Text.assemble(
                ("" if compact else "batch ", "dim"), f"{p.batch}/{p.batches}",
                ("  ", ""), (fmt.rate(p.tokens_per_s), "bold"), (" tok/s", "dim"),
                ("  ETA ", "dim"), fmt.duration(p.eta_s),
                ("  loss ", "dim"), fmt.num(p.loss, 3), overflow="ellipsis", no_wrap=True))
        set_text(self.query_one("#progress-status", Static), status_line(view, note))


def epoch_label(stage: int, epoch: int, max_epochs: int | None, compact: bool) -> Text:
    """`Stage 2  epoch 3/50`, or on a compact screen `S2 ep 3/50`."""
    of = f"{epoch}/{max_epochs or '?'}"
    if compact:
        return Text.assemble(("S", "dim"), (str(stage), "bold"), (" ep ", "dim"), (of, "bold"))
    return Text.assemble(("Stage ", "dim"), (str(stage), "bold"), ("  epoch ", "dim"),
                         (of, "bold"))
