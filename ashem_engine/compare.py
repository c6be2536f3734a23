"""Comparing runs: quality against honest cost, and which points are Pareto-optimal.

Every finished run with a threshold sweep leaves `sweep.json` in its run directory. A
comparison puts the series of several runs on one axis, MACs per token (absolute, so runs
of different depths compare), and marks the points no other point beats on both PPL and
cost. The app only draws what this module returns.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Iterable, Sequence

SWEEP_FILE = "sweep.json"


class ComparisonError(Exception):
    """A run directory that cannot be compared. str(error) is one line for a person."""


def mark_pareto(points: Sequence[dict]) -> None:
    """Sets point["pareto"]: True when no other point has lower-or-equal PPL and MACs per
    token with at least one strictly lower."""
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
        raise ComparisonError(f"{str(path)!r} has no {SWEEP_FILE}: only a finished run with "
                              "evaluation.sweep_points > 0 can be compared") from None
    except ValueError as e:
        raise ComparisonError(f"{str(path / SWEEP_FILE)!r} is not valid JSON: {e}") from None
    check_sweep(sweep, str(path / SWEEP_FILE))
    return sweep


def _number(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def check_sweep(sweep: object, where: str) -> None:
    """What combine() and a chart need of every series and point, or one line saying what
    is missing: a broken file is refused when it is read, not a traceback later."""
    if not isinstance(sweep, dict) or not isinstance(sweep.get("series"), list):
        raise ComparisonError(f"{where!r} is not an ashem sweep (no list of series)")
    try:
        for s in sweep["series"]:
            name = s["name"]
            for p in s["points"]:
                missing = [k for k in ("ppl", "macs_per_token") if not _number(p.get(k))]
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
