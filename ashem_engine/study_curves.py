"""Validation curves for comparing runs against compute: a run's val PPL epoch by epoch with
what it had trained by then (EpochEnded's tokens_trained, run_training_macs, run_seconds), and
a study's configurations as the mean curve over seeds with its 95 % interval (stats.aggregate).

A curve: {"name", "seeds" (a study's; absent for a run), "points": [point, ...]}; a run's
point: {"stage", "epoch", "val_ppl", and the X_FIELDS (None in logs written before them)};
a study's point the same over the seeds that reached that (stage, epoch): "seeds" n,
"val_ppl" the mean, "interval" stats.aggregate of the val PPLs, each of X_FIELDS the mean
(None unless every one of those seeds logged it). The app only draws these."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Optional, Sequence

from . import events as ev
from . import plan
from .compare import ComparisonError
from .rundir import EVENTS_FILE
from .stats import aggregate, is_number
from .study import StudyError, reopen_study, study_runs
from .summary import NOTHING_DONE

# What a chart against compute can put on its x-axis besides the epoch: the run's so far.
X_FIELDS = ("tokens_trained", "run_training_macs", "run_seconds")


def kept_epochs(events: Iterable[ev.Event]) -> list[ev.EpochEnded]:
    """A run's EpochEnded events as its last attempt left them: each RunStarted rewinds to its
    resume point (as the summary does), and a redone epoch replaces the one before."""
    epochs: list[ev.EpochEnded] = []
    for event in events:
        if isinstance(event, ev.RunStarted):
            point = event.resume_point if event.resumed else NOTHING_DONE
            if point is not None:  # None: logged before resume points were
                kept = plan.rewind(plan.of_run(event), point)
                epochs = [e for e in epochs if kept.keeps_epoch(e.stage, e.epoch)]
        elif isinstance(event, ev.EpochEnded):
            epochs = [e for e in epochs if (e.stage, e.epoch) < (event.stage, event.epoch)]
            epochs.append(event)
    return epochs


def curve_of(name: str, epochs: Iterable[ev.EpochEnded]) -> dict:
    """A run's curve from its (kept) EpochEnded events."""
    return {"name": name, "points": [
        {"stage": e.stage, "epoch": e.epoch, "val_ppl": e.val_ppl,
         **{x: getattr(e, x) for x in X_FIELDS}} for e in epochs]}


def run_curve(run_dir: str | os.PathLike, name: Optional[str] = None) -> Optional[dict]:
    """A run directory's curve from its events.jsonl; None without one."""
    path = Path(run_dir)
    path = path.parent if path.is_file() else path
    log = path / EVENTS_FILE
    if not log.is_file():
        return None
    try:
        events = ev.read_events(log)
    except OSError as e:
        raise ComparisonError(f"cannot read {str(log)!r}: {e.strerror or e}") from None
    return curve_of(name or path.resolve().name, kept_epochs(events))


def study_curves(study_dir: str | os.PathLike) -> list[dict]:
    """Per configuration with finished runs: the mean curve over its seeds with 95 %
    intervals. Raises ComparisonError (one line) for a study that cannot be read."""
    try:
        runs = study_runs(reopen_study(study_dir))
    except StudyError as e:
        raise ComparisonError(str(e)) from None
    out = []
    for name in dict.fromkeys(r.config.name for r in runs):
        seeds = [run_curve(r.run_dir, name) for r in runs
                 if r.config.name == name and r.finished]
        seeds = [c for c in seeds if c is not None and c["points"]]
        if seeds:
            out.append(mean_curve(name, seeds))
    return out


def mean_curve(name: str, curves: Sequence[dict]) -> dict:
    """Several seeds' curves as one: per (stage, epoch) that any seed reached, in order."""
    at: dict[tuple, list[dict]] = {}
    for curve in curves:
        for p in curve["points"]:
            at.setdefault((p["stage"], p["epoch"]), []).append(p)
    return {"name": name, "seeds": len(curves),
            "points": [mean_point(stage, epoch, at[stage, epoch]) for stage, epoch in sorted(at)]}


def mean_point(stage: int, epoch: int, points: Sequence[dict]) -> dict:
    ppls = [p["val_ppl"] for p in points]
    interval = aggregate(ppls)
    out = {"stage": stage, "epoch": epoch, "seeds": len(points), "val_ppl": interval["mean"],
           "interval": interval}
    for x in X_FIELDS:
        values = [p.get(x) for p in points]
        out[x] = aggregate(values)["mean"] if all(map(is_number, values)) else None
    return out
