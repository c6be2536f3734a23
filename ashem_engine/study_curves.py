"""Validation curves for comparing runs against compute: a run's val PPL epoch by epoch with
what it had trained by then (EpochEnded's tokens_trained, run_training_macs, run_seconds), and
a study's configurations as the mean curve over seeds with its 95 % interval (stats.aggregate).

A curve: {"name", "seeds" (a study's; absent for a run), "points": [point, ...]}; a run's
point: {"stage", "epoch", "val_ppl", and the X_FIELDS (None in logs written before them)};
a study's point the same over the seeds that reached that (stage, epoch): "seeds" n,
"val_ppl" the mean, "interval" stats.aggregate of the val PPLs, each of X_FIELDS the mean
(None unless every one of those seeds logged it). The app only draws these.

The compute-matched view (mean_curve_band, compute_matched): each configuration's validation
NLL at a fixed grid of cumulative training MACs, mean and 95 % band over its seeds. A run's
value at m is its best validation PPL at or before m, stage by stage through the run (so its
curve never rises), and missing where the run has not reached m."""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Iterable, Optional, Sequence

from . import events as ev
from . import plan
from .compare import ComparisonError
from .rundir import EVENTS_FILE
from .stats import aggregate, is_number, ppl_interval
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


# -- the compute-matched view ----------------------------------------------------------------

MACS = "run_training_macs"
GRID_POINTS = 8  # the default grid: this many equal steps up to the longest run


def best_so_far(curve: dict, macs: float) -> Optional[float]:
    """A run's best validation PPL at or before `macs` cumulative training MACs; None where
    the run has not reached `macs`, or had no validation by then."""
    points = [p for p in curve["points"] if is_number(p.get(MACS)) and is_number(p["val_ppl"])
              and not math.isnan(p["val_ppl"])]
    if not points or max(p[MACS] for p in points) < macs:
        return None
    before = [p["val_ppl"] for p in points if p[MACS] <= macs]
    return min(before) if before else None


def mean_curve_band(curves: Sequence[dict], grid: Sequence[float]) -> list[dict]:
    """Per grid point (cumulative training MACs), over the runs' curves (a configuration's
    seeds) that reached it: n, the mean validation NLL with its 95 % band (nll_mean, nll_lo,
    nll_hi) and the PPL as exp of those (ppl_mean: the geometric mean; ppl_lo, ppl_hi)."""
    out = []
    for macs in grid:
        reached = [v for v in (best_so_far(c, macs) for c in curves) if v is not None]
        band = ppl_interval(reached)
        mean, half = band["mean_nll"], band["half_nll"]
        out.append({"training_macs": macs, "n": band["n"], "nll_mean": mean,
                    "nll_lo": None if half is None else mean - half,
                    "nll_hi": None if half is None else mean + half,
                    "ppl_mean": band["ppl"], "ppl_lo": band["ppl_lo"], "ppl_hi": band["ppl_hi"]})
    return out


def default_grid(curves: Sequence[dict], points: int = GRID_POINTS) -> list[float]:
    """`points` equal steps of a round size (1, 2 or 5 × 10^k MACs) up to the longest run."""
    ends = [p[MACS] for c in curves for p in c["points"] if is_number(p.get(MACS))]
    if not ends or max(ends) <= 0:
        return []
    rough = max(ends) / points
    power = 10 ** math.floor(math.log10(rough))
    step = next(k * power for k in (1, 2, 5, 10) if k * power >= rough)
    return [step * k for k in range(1, points + 1) if step * k <= max(ends)]


def compute_matched(study_dir: str | os.PathLike, grid: Optional[Sequence[float]] = None
                    ) -> dict:
    """The study's compute-matched view: {"grid", "rule", "configurations": [{"name", "runs",
    "band": mean_curve_band(...)}]} over its finished runs. Without `grid`: the analysis
    plan's [compute_matched] training_macs, else default_grid. Raises ComparisonError."""
    try:
        study = reopen_study(study_dir)
    except StudyError as e:
        raise ComparisonError(str(e)) from None
    runs = [r for r in study_runs(study) if r.finished]
    by_config = {c.name: [run_curve(r.run_dir, c.name) for r in runs if r.config.name == c.name]
                 for c in study.configurations}
    by_config = {name: [c for c in curves if c is not None] for name, curves in by_config.items()}
    planned = ((study.analysis_plan or {}).get("content") or {}).get("compute_matched") or {}
    if grid is None:
        grid = planned.get("training_macs") or default_grid(
            [c for curves in by_config.values() for c in curves])
    return {"grid": list(grid), "rule": "validation NLL, best so far at or before each "
            "cumulative training MACs; mean over seeds ± 95 % t half-width (n)",
            "configurations": [{"name": name, "runs": len(curves),
                                "band": mean_curve_band(curves, grid)}
                               for name, curves in by_config.items()]}
