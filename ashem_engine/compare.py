"""Comparing runs: quality against honest cost, and which points are Pareto-optimal.

A comparison puts the sweep.json series of several runs on one axis, MACs per token (absolute,
so runs of different depths compare), and marks the points no other beats on PPL and cost.
The app only draws what this module returns."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Iterable, Sequence

from .rundir import SWEEP_FILE
from .stats import aggregate, is_number, ppl_interval
from .study import StudyError, is_study, reopen_study, study_runs


class ComparisonError(Exception):
    """A run directory that cannot be compared. str(error) is one line for a person."""


def mark_pareto(points: Sequence[dict]) -> None:
    """point["pareto"]: no other point has PPL and MACs per token both <=, one of them <."""
    for p in points:
        p["pareto"] = math.isfinite(p["ppl"]) and not any(
            q is not p and math.isfinite(q["ppl"])
            and q["ppl"] <= p["ppl"] and q["macs_per_token"] <= p["macs_per_token"]
            and (q["ppl"] < p["ppl"] or q["macs_per_token"] < p["macs_per_token"])
            for q in points)


def read_sweep(run_dir: str | os.PathLike) -> dict:
    path = Path(run_dir)
    if path.is_file():
        path = path.parent
    if not path.is_dir():
        raise ComparisonError(f"run directory {str(path)!r} does not exist")
    try:
        sweep = json.loads((path / SWEEP_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ComparisonError(f"{str(path)!r} has no {SWEEP_FILE} and no study.json: it is "
                              "neither a finished run (with evaluation.sweep_points > 0) nor "
                              "a study") from None
    except ValueError as e:
        raise ComparisonError(f"{str(path / SWEEP_FILE)!r} is not valid JSON: {e}") from None
    check_sweep(sweep, str(path / SWEEP_FILE))
    return sweep


def check_sweep(sweep: object, where: str) -> None:
    """What combine() and a chart need of every series and point, or one line saying what
    is missing: a broken file is refused when it is read, not a traceback later."""
    if not isinstance(sweep, dict) or not isinstance(sweep.get("series"), list):
        raise ComparisonError(f"{where!r} is not an ashem sweep (no list of series)")
    try:
        for s in sweep["series"]:
            name = s["name"]
            for p in s["points"]:
                missing = [k for k in ("ppl", "macs_per_token") if not is_number(p.get(k))]
                if missing:
                    raise ComparisonError(f"{where!r}: a point of series {name!r} has no "
                                          f"number for {missing[0]}")
    except (KeyError, TypeError, AttributeError) as err:
        raise ComparisonError(f"{where!r} is not a complete ashem sweep "
                              f"({type(err).__name__}: {err})") from None


def combine(sweeps: Iterable[dict]) -> dict:
    """One comparison from several sweeps (each a sweep.json or a SweepComputed event as a
    dict with "name"): series labelled by run, Pareto flags over all points together."""
    series, splits = [], set()
    for sweep in sweeps:
        run = sweep.get("name", "run")
        splits.add(sweep.get("split", "?"))
        for s in sweep["series"]:
            series.append({"label": f"{run} · {s['name']}", "run": run, "name": s["name"],
                           "kind": s.get("kind", "sweep"), "signal": s.get("signal"),
                           "split": sweep.get("split", "?"), "protocol": sweep.get("protocol", {}),
                           "points": [dict(p) for p in s["points"]]})
    mark_pareto([p for s in series for p in s["points"]])
    return {"series": series, "splits": sorted(splits),
            "mixed_splits": len(splits) > 1}


def load_comparison(run_dirs: Sequence[str | os.PathLike]) -> dict:
    return combine(read_sweep(d) for d in run_dirs)


def pareto_rows(comparison: dict) -> list[dict]:
    """The Pareto-optimal points of a comparison, cheapest first, each with its series."""
    rows = [{**p, "label": s["label"]} for s in comparison["series"] for p in s["points"]
            if p.get("pareto")]
    return sorted(rows, key=lambda r: r["macs_per_token"])


# -- studies: each configuration's seeds as one sweep, with intervals ----------------------

# A study point's PPL is the geometric mean over seeds, exp(mean NLL), with the 95 % interval
# taken on the NLL and shown back as PPL: point["interval"]["nll"] (stats.ppl_interval), never
# below 0. The other figures are arithmetic means; point["interval"]["macs_per_token"] and
# point["interval"]["ppl"] (the PPLs' own t interval, kept for older readers: it can reach
# below 0 with few seeds) are stats.aggregate across seeds.
MEANED = ("accuracy", "deep_ratio", "spec_cost", "honest_cost", "macs_per_token")
INTERVALS = ("ppl", "macs_per_token")


def read_compared(directory: str | os.PathLike) -> list[dict]:
    """What `ashem --compare DIR` shows of a directory: a run's sweep.json, or a study's
    configurations, one sweep each (study_sweeps). Raises ComparisonError."""
    return study_sweeps(directory) if is_study(directory) else [read_sweep(directory)]


def study_sweeps(study_dir: str | os.PathLike) -> list[dict]:
    """Per configuration with a finished run: its seeds' sweeps as one (seeds_sweep)."""
    try:
        runs = study_runs(reopen_study(study_dir))
    except StudyError as e:
        raise ComparisonError(str(e)) from None
    configs = dict.fromkeys(r.config.name for r in runs)
    out = []
    for name in configs:
        sweeps = [read_sweep(r.run_dir) for r in runs if r.config.name == name
                  and r.finished and (r.run_dir / SWEEP_FILE).is_file()]
        if sweeps:
            out.append(seeds_sweep(name, sweeps))
    if not out:
        raise ComparisonError(f"study {str(study_dir)!r} has no finished run with a sweep yet")
    return out


def seeds_sweep(name: str, sweeps: Sequence[dict]) -> dict:
    """One configuration's sweeps over its seeds as one: each point (same series and quantile)
    the mean over seeds (mean_point), "seeds" n. Each series keeps its own name from the
    runs' sweep.json ("plain model (4 layers)", "ASHEM · max-softmax", ...)."""
    first = sweeps[0]
    series = []
    for s in first["series"]:
        same = [_series_named(sweep, s["name"], name) for sweep in sweeps]
        if any(len(x["points"]) != len(s["points"]) for x in same):
            raise ComparisonError(f"study configuration {name!r}: the seeds' series "
                                  f"{s['name']!r} have different numbers of points")
        points = [mean_point([x["points"][i] for x in same], name)
                  for i in range(len(s["points"]))]
        series.append({**{k: v for k, v in s.items() if k != "points"}, "points": points})
    return {"name": name, "split": first.get("split", "?"), "tokens": first.get("tokens"),
            "plain_macs_per_token": first.get("plain_macs_per_token"),
            "protocol": first.get("protocol", {}), "seeds": len(sweeps), "series": series}


def _series_named(sweep: dict, series: str, config: str) -> dict:
    for s in sweep["series"]:
        if s["name"] == series:
            return s
    raise ComparisonError(f"study configuration {config!r}: a seed has no series {series!r}")


def mean_point(points: Sequence[dict], config: str) -> dict:
    """The seeds' points (one series, one quantile) as one: "ppl" the geometric mean with
    interval["nll"], the other MEANED figures the arithmetic mean, see INTERVALS above."""
    quantiles = {p.get("quantile") for p in points}
    if len(quantiles) != 1:
        raise ComparisonError(f"study configuration {config!r}: the seeds' sweeps have "
                              f"other quantiles ({sorted(map(str, quantiles))})")
    out: dict = {"quantile": points[0].get("quantile"), "seeds": len(points), "pareto": False}
    for key in MEANED:
        values = [p.get(key) for p in points]
        out[key] = aggregate(values)["mean"] if all(map(is_number, values)) else None
    out["interval"] = {key: aggregate([p[key] for p in points]) for key in INTERVALS}
    ppls = [p["ppl"] for p in points]
    nll = ppl_interval(ppls)
    out["ppl_arithmetic_mean"] = out["interval"]["ppl"]["mean"]
    if nll["n"] < len(ppls):  # a seed without a positive, finite PPL (it diverged)
        out["ppl"], out["interval"]["nll"] = out["ppl_arithmetic_mean"], None
    else:
        out["ppl"] = ppls[0] if len(ppls) == 1 else nll["ppl"]
        out["interval"]["nll"] = nll
    return out


# -- a study's validation curves against training compute, with bands ----------------------

def study_compute_bands(study_dir: str | os.PathLike) -> dict[str, list[dict]]:
    """Per configuration with finished runs: its validation PPL against cumulative training
    MACs, the best so far of each seed, as the geometric mean over seeds with its 95 % band
    (study_curves.mean_curve_band), at every MACs where one of the study's runs ended an epoch
    (where a best-so-far curve can change): the same grid for every configuration."""
    from .study_curves import MACS, mean_curve_band, run_curve  # (it imports this module)

    try:
        runs = [r for r in study_runs(reopen_study(study_dir)) if r.finished]
    except StudyError as e:
        raise ComparisonError(str(e)) from None
    curves: dict[str, list[dict]] = {}
    for run in runs:
        curve = run_curve(run.run_dir, run.config.name)
        if curve is not None and curve["points"]:
            curves.setdefault(run.config.name, []).append(curve)
    grid = sorted({p[MACS] for cs in curves.values() for c in cs for p in c["points"]
                   if is_number(p.get(MACS))})
    return {name: mean_curve_band(cs, grid) for name, cs in curves.items()}
