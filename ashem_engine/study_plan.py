"""A study's analysis plan: its primary comparisons and endpoints, fixed before the runs.

A plan is a TOML file, recorded in study.json under "analysis_plan" (the file's path, its
sha256, its parsed content, the UTC time it was recorded and how many runs had finished by
then); once recorded it never changes. The file:

    description = "..."                  # optional
    [[primary]]                          # one or more: the comparisons the study is for
    name = "ASHEM vs the 8-layer model"  # optional (default: "CONFIGURATION vs AGAINST")
    configuration = "scale-ashem-4-8"    # configurations of the study
    against = "scale-scratch-8"
    endpoint = "test_nll"                # an ENDPOINTS name (or a study figure, see below)
    signal = "softmax"                   # test_nll_at_cost only: the sweep it reads
    [[exploratory]]                      # optional: comparisons named in advance, not primary
    [exit]                               # optional: the exit quantile, and what chose it
    quantile = 0.5
    chosen_on = "prespecified"           # or "validation"
    [compute_matched]                    # optional: the training-MACs grid of that view
    training_macs = [1e15, 2e15, 4e15]

An endpoint is a difference paired by seed, configuration minus against: on mean NLL for
ENDPOINTS (with the PPL ratio exp(diff) and its back-transformed interval), on the figure
itself for a study figure's name (study_table.FIGURES, or stage_N.best_val_ppl/best_epoch),
which serves exploratory use."""
from __future__ import annotations

import dataclasses
import hashlib
import math
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional, Sequence

import tomli

from .exit_signals import SIGNALS
from .rundir import atomic_write_json
from .stats import aggregate, is_number, paired_nll_difference
from .study import (STUDY_FILE, StudyError, StudyPlan, read_study_file, refuse_if_running,
                    study_runs)

PLAN_KEY = "analysis_plan"  # in study.json
ENDPOINTS = {
    "test_nll": "the final report's mean NLL, ln of its PPL",
    "test_nll_at_cost": "the configuration's sweep (of `signal`) at the against run's MACs per "
                        "token, NLL interpolated linearly in MACs between the two sweep points "
                        "around it; missing outside the swept range",
}
CHOSEN_ON = ("prespecified", "validation")
TOP_KEYS = ("description", "primary", "exploratory", "exit", "compute_matched")
COMPARISON_KEYS = ("name", "configuration", "against", "endpoint", "signal")
STAGE_FIGURE = re.compile(r"stage_\d+\.(best_val_ppl|best_epoch)")


@dataclass(frozen=True)
class Comparison:
    section: str  # "primary" or "exploratory"
    name: str
    configuration: str
    against: str
    endpoint: str
    signal: Optional[str] = None

    @property
    def on_nll(self) -> bool:
        return self.endpoint in ENDPOINTS


# -- reading and checking a plan file --------------------------------------------------------

def read_plan(path: str) -> dict:
    """A plan file as its record for study.json (without the time it is recorded): path,
    sha256 and parsed content. Raises StudyError (one line) for a file that is not a plan."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise StudyError(f"--plan {path}: cannot be read ({e.strerror or e})") from None
    try:
        content = tomli.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, tomli.TOMLDecodeError) as e:
        raise StudyError(f"--plan {path}: not valid TOML ({_one_line(e)})") from None
    check_content(content, f"--plan {path}")
    return {"path": str(path), "sha256": hashlib.sha256(data).hexdigest(), "content": content}


def check_content(content: dict, where: str) -> None:
    """StudyError naming the first thing wrong with a plan's parsed content."""
    _only(content, TOP_KEYS, where)
    if not isinstance(content.get("description", ""), str):
        raise StudyError(f"{where}: description must be a string")
    if not content.get("primary"):
        raise StudyError(f"{where}: no [[primary]] comparison; a plan names at least one")
    for section in ("primary", "exploratory"):
        entries = content.get(section, [])
        if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
            raise StudyError(f"{where}: {section} must be a list of tables ([[{section}]])")
        for k, entry in enumerate(entries, start=1):
            _check_comparison(entry, f"{where}: [[{section}]] {k}")
    _check_exit(content.get("exit"), where)
    _check_grid(content.get("compute_matched"), where)


def _check_comparison(entry: dict, where: str) -> None:
    _only(entry, COMPARISON_KEYS, where)
    for key in ("configuration", "against", "endpoint"):
        if not isinstance(entry.get(key), str) or not entry[key]:
            raise StudyError(f"{where}: {key} must be given, a non-empty string")
    if not isinstance(entry.get("name", ""), str):
        raise StudyError(f"{where}: name must be a string")
    if entry["configuration"] == entry["against"]:
        raise StudyError(f"{where}: configuration and against are both "
                         f"{entry['against']!r}; compare two configurations")
    endpoint = entry["endpoint"]
    if endpoint not in ENDPOINTS and not is_figure(endpoint):
        raise StudyError(f"{where}: endpoint {endpoint!r} is unknown; allowed: "
                         f"{', '.join(ENDPOINTS)} or a study figure's name (study_table)")
    signal = entry.get("signal")
    if endpoint == "test_nll_at_cost":
        if signal not in SIGNALS:
            raise StudyError(f"{where}: test_nll_at_cost needs signal = one of "
                             f"{', '.join(SIGNALS)} (the sweep it reads), not {signal!r}")
    elif signal is not None:
        raise StudyError(f"{where}: signal is only for the test_nll_at_cost endpoint")


def _check_exit(table: object, where: str) -> None:
    if table is None:
        return
    if not isinstance(table, dict):
        raise StudyError(f"{where}: exit must be a table ([exit])")
    _only(table, ("quantile", "chosen_on"), f"{where}: [exit]")
    q = table.get("quantile")
    if not is_number(q) or not 0 <= q <= 1:
        raise StudyError(f"{where}: [exit] quantile must be a number from 0 to 1, not {q!r}")
    if table.get("chosen_on") not in CHOSEN_ON:
        raise StudyError(f"{where}: [exit] chosen_on must be one of {', '.join(CHOSEN_ON)} "
                         f"(never the test split), not {table.get('chosen_on')!r}")


def _check_grid(table: object, where: str) -> None:
    if table is None:
        return
    if not isinstance(table, dict):
        raise StudyError(f"{where}: compute_matched must be a table ([compute_matched])")
    _only(table, ("training_macs",), f"{where}: [compute_matched]")
    grid = table.get("training_macs")
    if not isinstance(grid, list) or not grid or not all(
            is_number(m) and m > 0 for m in grid) or sorted(set(grid)) != grid:
        raise StudyError(f"{where}: [compute_matched] training_macs must be a list of "
                         "positive numbers, increasing")


def _only(table: dict, allowed: Sequence[str], where: str) -> None:
    unknown = [k for k in table if k not in allowed]
    if unknown:
        raise StudyError(f"{where}: unknown key {unknown[0]!r}; allowed: {', '.join(allowed)}")


def _one_line(error: Exception) -> str:
    return " ".join(str(error).split())


def is_figure(name: str) -> bool:
    from .study_table import FIGURES  # here: study_table reads plans, this module its figures

    return any(f.name == name for f in FIGURES) or bool(STAGE_FIGURE.fullmatch(name))


def comparisons(content: Optional[dict]) -> list[Comparison]:
    """A plan's comparisons, primary first; none without a plan."""
    out = []
    for section in ("primary", "exploratory"):
        for entry in (content or {}).get(section, []):
            name = entry.get("name") or f"{entry['configuration']} vs {entry['against']}"
            out.append(Comparison(section, name, entry["configuration"], entry["against"],
                                  entry["endpoint"], entry.get("signal")))
    return out


def check_fits(record: dict, names: Sequence[str], recorded: Optional[dict],
               where: str) -> None:
    """StudyError when a plan names a configuration the study lacks, or the study already
    has another plan (a plan, once recorded, is fixed)."""
    if recorded and recorded.get("sha256") != record["sha256"]:
        raise StudyError(f"study {where} already has an analysis plan (sha256:"
                         f"{recorded.get('sha256', '?')[:12]}, from {recorded.get('path')}) and "
                         f"{record['path']} is another (sha256:{record['sha256'][:12]}); a "
                         "recorded plan is fixed: start a new study for another plan")
    for c in comparisons(record["content"]):
        for side in (c.configuration, c.against):
            if side not in names:
                raise StudyError(f"--plan {record['path']}: {c.section} comparison {c.name!r} "
                                 f"names configuration {side!r}, which is not in the study "
                                 f"(it has {', '.join(names)})")


def attach_plan(plan: StudyPlan, record: dict) -> StudyPlan:
    """The placed study with the plan recorded in its study.json (when it had none; the same
    plan again changes nothing). Raises StudyError, writing nothing, for a plan that does not
    fit the study."""
    recorded = read_study_file(plan.directory).get(PLAN_KEY)
    check_fits(record, [c.name for c in plan.configurations], recorded, str(plan.directory))
    if recorded:
        return dataclasses.replace(plan, analysis_plan=recorded)
    refuse_if_running(plan.directory)
    runs = study_runs(plan)
    stamped = {**record, "recorded_at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
               "finished_runs": sum(r.finished for r in runs), "runs": len(runs)}
    saved = read_study_file(plan.directory)
    saved[PLAN_KEY] = stamped
    try:
        atomic_write_json(plan.directory / STUDY_FILE, saved)
    except OSError as e:
        raise StudyError(f"study directory {str(plan.directory)!r} cannot be written: "
                         f"{e.strerror or e}") from None
    return dataclasses.replace(plan, analysis_plan=stamped)


# -- the endpoints -------------------------------------------------------------------------

def nll_at_cost(points: Sequence[dict], macs: float) -> tuple[Optional[float], str]:
    """The NLL (ln PPL) of a sweep's points at `macs` per token: linear in MACs between the
    first two neighbouring points (in the sweep's order) whose MACs bracket it; (None, why)
    outside the swept range."""
    usable = [p for p in points if is_number(p.get("macs_per_token")) and is_number(p.get("ppl"))
              and p["ppl"] > 0]
    if not usable:
        return None, "the sweep has no points"
    for p in usable:
        if p["macs_per_token"] == macs:
            return math.log(p["ppl"]), ""
    for a, b in zip(usable, usable[1:]):
        low, high = sorted((a["macs_per_token"], b["macs_per_token"]))
        if low < macs < high:
            share = (macs - a["macs_per_token"]) / (b["macs_per_token"] - a["macs_per_token"])
            return math.log(a["ppl"]) + share * (math.log(b["ppl"]) - math.log(a["ppl"])), ""
    span = [p["macs_per_token"] for p in usable]
    return None, (f"{macs / 1e6:.4g} M MACs/token is outside the swept range "
                  f"({min(span) / 1e6:.4g} … {max(span) / 1e6:.4g} M)")


def sweep_series(sweep: dict, signal: str) -> list[dict]:
    for series in sweep.get("series", []):
        if series.get("kind") == "sweep" and series.get("signal") == signal:
            return series.get("points", [])
    return []


RunFiles = dict  # configuration -> {seed: (summary, sweep)} of its finished runs


def endpoint_values(c: Comparison, files: RunFiles
                    ) -> tuple[dict[int, float], dict[int, float], list[dict]]:
    """Per seed both sides finished: the configuration's and the against's value (PPLs for
    an NLL endpoint, the figure otherwise), and the seeds missing, each with why."""
    from .study_table import run_figures

    mine, theirs = files.get(c.configuration, {}), files.get(c.against, {})
    ours: dict[int, float] = {}
    others: dict[int, float] = {}
    missing = []
    for seed in sorted(set(mine) | set(theirs)):
        if seed not in mine or seed not in theirs:
            absent = c.configuration if seed not in mine else c.against
            missing.append({"seed": seed, "why": f"{absent} has no finished run"})
            continue
        (summary, sweep), (their_summary, their_sweep) = mine[seed], theirs[seed]
        if c.on_nll:
            value, against, why = _nll_sides(c, summary, sweep, their_summary)
        else:
            value = run_figures(summary, sweep).get(c.endpoint)
            against = run_figures(their_summary, their_sweep).get(c.endpoint)
            why = "" if is_number(value) and is_number(against) else f"no {c.endpoint}"
        if why:
            missing.append({"seed": seed, "why": why})
        else:
            ours[seed], others[seed] = value, against
    return ours, others, missing


def _nll_sides(c: Comparison, summary: dict, sweep: dict, their_summary: dict
               ) -> tuple[Optional[float], Optional[float], str]:
    """(configuration's PPL, against's PPL, why missing) for an NLL endpoint at one seed."""
    final, theirs = summary.get("final") or {}, their_summary.get("final") or {}
    against = theirs.get("ppl")
    if not is_number(against) or against <= 0:
        return None, None, f"{c.against} has no final PPL"
    if c.endpoint == "test_nll":
        ppl = final.get("ppl")
        return (ppl, against, "") if is_number(ppl) and ppl > 0 else \
            (None, None, f"{c.configuration} has no final PPL")
    macs = theirs.get("macs_per_token")
    if not is_number(macs):
        return None, None, f"{c.against} has no final MACs per token"
    nll, why = nll_at_cost(sweep_series(sweep, c.signal), macs)
    if nll is None:
        return None, None, f"{c.configuration}'s {c.signal} sweep: {why}"
    return math.exp(nll), against, ""


def endpoint_row(c: Comparison, files: RunFiles) -> dict:
    """One comparison, paired by seed: for an NLL endpoint the mean NLL difference ± its 95 %
    half-width and the PPL ratio [lo, hi] (stats.paired_nll_difference); for a figure the
    mean difference ± half-width (stats.aggregate). "values" per seed, "missing" with why."""
    ours, theirs, missing = endpoint_values(c, files)
    row = {**dataclasses.asdict(c), "on": "nll" if c.on_nll else "figure", "missing": missing}
    if c.on_nll:
        row.update(paired_nll_difference(ours, theirs))
        row["values"] = [{"seed": s, "nll": math.log(ours[s]), "against_nll": math.log(theirs[s]),
                          "diff": math.log(ours[s]) - math.log(theirs[s])} for s in ours]
    else:
        diffs = aggregate([ours[s] - theirs[s] for s in ours])
        row.update(n=diffs["n"], diff=diffs["mean"], half=diffs["half_width"], ratio=None,
                   ratio_lo=None, ratio_hi=None)
        row["values"] = [{"seed": s, "value": ours[s], "against_value": theirs[s],
                          "diff": ours[s] - theirs[s]} for s in ours]
    return row


def plan_summary(record: Optional[dict]) -> Optional[dict]:
    """What a table says of the plan it follows: no content, its exit choice."""
    if not record:
        return None
    keep = ("path", "sha256", "recorded_at", "finished_runs", "runs")
    return {**{k: record.get(k) for k in keep},
            "description": record["content"].get("description"),
            "exit": record["content"].get("exit"),
            "compute_matched": record["content"].get("compute_matched")}
