"""Progress of the current epoch, from the latest BatchProgress, plus a one-line status."""
from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.widgets import ProgressBar, Static

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
        return Text(f"✓ finished in {fmt.duration(view.finished.seconds)} · "
                    f"{view.finished.run_dir}", style="bold cyan")
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
    if last is not None and last.epoch == view.progress.epoch and \
            view.progress.batch >= view.progress.batches:
        return Text(f"stage {step.stage}: validating epoch {last.epoch}…", style="cyan")
    return Text(f"stage {step.stage}: training", style="green")


class ProgressPanel(Vertical):
    def compose(self) -> ComposeResult:
        with Horizontal(id="progress-row"):
            yield Static(id="progress-epoch")
            yield ProgressBar(total=1, show_eta=False, show_percentage=True,
                              id="progress-bar")
            yield Static(id="progress-stats")
        yield Static(id="progress-status")

    def show(self, view: RunView, note: str = "") -> None:
        p = view.progress
        epoch = self.query_one("#progress-epoch", Static)
        stats = self.query_one("#progress-stats", Static)
        bar = self.query_one("#progress-bar", ProgressBar)
        if p is None:
            set_text(epoch, Text("epoch –", style="dim"))
            set_text(stats, "")
            if bar.total != 1 or bar.progress != 0:
                bar.update(total=1, progress=0)  # not None: an indeterminate bar animates
        else:
            max_epochs = view.max_epochs(p.stage)
            set_text(epoch, Text.assemble(("Stage ", "dim"), (str(p.stage), "bold"),
                                          ("  epoch ", "dim"),
                                          (f"{p.epoch}/{max_epochs or '?'}", "bold")))
            if bar.total != p.batches or bar.progress != p.batch:
                bar.update(total=p.batches, progress=p.batch)
            set_text(stats, Text.assemble(
                ("batch ", "dim"), f"{p.batch}/{p.batches}",
                ("  ", ""), (fmt.rate(p.tokens_per_s), "bold"), (" tok/s", "dim"),
                ("  ETA ", "dim"), fmt.duration(p.eta_s),
                ("  loss ", "dim"), fmt.num(p.loss, 3)))
        set_text(self.query_one("#progress-status", Static), status_line(view, note))
