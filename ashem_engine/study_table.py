"""A study's table: every figure of every configuration across its finished seeds.

FIGURES is the one list of what a study tabulates, read from each finished run's summary.json
and sweep.json; per configuration and figure, table.json, table.csv and table.md hold n, mean,
sd, the 95 % interval (stats.aggregate) and the per-seed values.

Differences are paired by seed: a run's ASHEM PPL minus its own stage-1 model's, and each
configuration's PAIRED figures minus the first configuration's at the same seed. Configurations
sharing stage 1's settings share its model at a seed: their difference leaves out its effect.

A study with an analysis plan (study_plan.py) has its primary comparisons first: differences of
mean NLL paired by seed, with the PPL ratio back-transformed; everything else is exploratory.
Each configuration's test PPL is also shown on NLL: its geometric mean with that interval."""
from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from .exit_signals import SIGNALS
from .names import SOFTMAX
from .rundir import SUMMARY_FILE, SWEEP_FILE, atomic_write, atomic_write_json
from .stats import CONFIDENCE, aggregate, is_number, ppl_interval
from .study import StudyPlan, StudyRun, study_runs
from .summary import SHARED_FROM
from .study_plan import Comparison, RunFiles, comparisons, endpoint_row, plan_summary

INTERVAL_RULE = "Student t: mean ± t(0.975, n - 1) · sd / sqrt(n)"


@dataclass(frozen=True)
class Figure:
    name: str
    meaning: str
    read: Callable[[dict, dict], Optional[float]]  # (summary, sweep or {}) -> value or None


def _final(key: str) -> Callable[[dict, dict], Optional[float]]:
    return lambda summary, sweep: (summary.get("final") or {}).get(key)


def _shallow(summary: dict, sweep: dict) -> Optional[float]:
    ratios = (summary.get("final") or {}).get("exit_ratios") or [None]
    return ratios[0]


def _stage_one_alone(key: str) -> Callable[[dict, dict], Optional[float]]:
    def read(summary: dict, sweep: dict) -> Optional[float]:
        for series in sweep.get("series", []):
            if series.get("kind") == "baseline" and series.get("name", "").startswith("stage-1"):
                return series["points"][0].get(key)
        return None
    return read


def _sweep_gain(signal: str, quantile: float) -> Callable[[dict, dict], Optional[float]]:
    """The sweep's PPL at a fixed quantile (not one chosen on the report split) minus stage 1's."""
    def read(summary: dict, sweep: dict) -> Optional[float]:
        alone = _stage_one_alone("ppl")(summary, sweep)
        points = [p for x in sweep.get("series", []) if x.get("kind") == "sweep"
                  and x.get("signal") == signal for p in x.get("points", [])
                  if is_number(p.get("quantile")) and abs(p["quantile"] - quantile) < 1e-9]
        return points[0].get("ppl") - alone if points and is_number(alone) else None
    return read


def _compute(key: str) -> Callable[[dict, dict], Optional[float]]:
    """summary.json's compute_macs[key] (summary.COMPUTE_RULE)."""
    return lambda summary, sweep: (summary.get("compute_macs") or {}).get(key)


def _gain_over_stage_one(summary: dict, sweep: dict) -> Optional[float]:
    ashem, alone = _final("ppl")(summary, sweep), _stage_one_alone("ppl")(summary, sweep)
    return ashem - alone if is_number(ashem) and is_number(alone) else None


SWEEP_QUANTILES = (0.1, 0.5)  # fixed in advance: never chosen on the report split
FIGURES = (
    Figure("final.ppl", "the final report's PPL", _final("ppl")),
    Figure("final.accuracy", "the final report's accuracy", _final("accuracy")),
    Figure("final.shallow_ratio", "the final report's fraction of tokens leaving at the "
           "first exit", _shallow),
    Figure("final.spec_cost", "the final report's compute cost by the spec's formula, of the "
           "plain deepest model", _final("compute_cost")),
    Figure("final.honest_cost", "the final report's honest cost, of the plain deepest model",
           _final("honest_cost")),
    Figure("final.macs_per_token", "the final report's MACs per token", _final("macs_per_token")),
    # stage_N.best_val_ppl and stage_N.best_epoch go here, one pair per stage (STAGE_FIGURES)
    Figure("stage_1_alone.ppl", "the stage-1 model alone on the report split (sweep.json)",
           _stage_one_alone("ppl")),
    Figure("stage_1_alone.accuracy", "the stage-1 model alone: accuracy (sweep.json)",
           _stage_one_alone("accuracy")),
    Figure("final.ppl_minus_stage_1_alone", "the final report's PPL minus the stage-1 model's "
           "alone on the same split, paired within the run (negative: ASHEM is better)",
           _gain_over_stage_one),
    *(Figure(f"sweep.{s.name}.q{q:.2f}.ppl_minus_stage_1_alone",
             f"the sweep's PPL with the {s.label} at quantile {q:.2f} (a fraction {q:.2f} "
             "of tokens sent deep) minus the stage-1 model's alone, within the run",
             _sweep_gain(s.name, q))
      for s in SIGNALS.values() for q in SWEEP_QUANTILES),
    Figure("sweep.all_deep.ppl_minus_stage_1_alone", "the sweep's PPL with every token sent "
           "to the last exit (quantile 1) minus the stage-1 model's alone, within the run",
           _sweep_gain(SOFTMAX, 1.0)),
    Figure("stage_1_alone.macs_per_token", "the stage-1 model alone: MACs per token "
           "(sweep.json)", _stage_one_alone("macs_per_token")),
    Figure("plain_macs_per_token", "MACs per token of the plain deepest model (sweep.json)",
           lambda summary, sweep: sweep.get("plain_macs_per_token")),
    Figure("seconds", "the run's seconds, over every attempt",
           lambda summary, sweep: summary.get("seconds")),
    Figure("training_macs", "MACs spent in training, every stage (summary training_macs.total)",
           lambda summary, sweep: (summary.get("training_macs") or {}).get("total")),
    Figure("charged_training_macs", "MACs charged to training: training_macs and the part of "
           "each mining pass that made the stored states a token-context stage trains on "
           "(summary compute_macs.training)", _compute("training")),
    Figure("selection_macs", "MACs of selection: each epoch's validation and hard PPL, each "
           "mining pass but its stored states' part (summary compute_macs.selection)",
           _compute("selection")),
    Figure("total_macs", "charged_training_macs + selection_macs (summary compute_macs.total)",
           _compute("total")),
)
STAGE_FIGURES = (("best_val_ppl", "stage {n}'s best validation PPL"),
                 ("best_epoch", "the epoch of stage {n}'s best validation PPL"))
FIRST_AFTER_STAGES = "stage_1_alone.ppl"  # the stage figures come before this one
# differences between configurations
# (MACs per token, absolute: each run's honest cost is relative to its own plain model)
PAIRED = ("final.ppl", "final.macs_per_token", "training_macs", "total_macs")
# a paired MACs-per-token difference as a fraction of the reference's plain model's MACs
HONEST_COST_DIFFERENCE = "final.honest_cost_vs_reference_plain"


def run_figures(summary: dict, sweep: dict) -> dict[str, float]:
    """A finished run's figures, in FIGURES' order; a figure it lacks is left out."""
    stages = {f"stage_{r['stage']}.{key}": r.get(key)
              for r in summary.get("stages", []) for key, _ in STAGE_FIGURES}
    out: dict[str, float] = {}
    for figure in FIGURES:
        if figure.name == FIRST_AFTER_STAGES:
            out.update((k, v) for k, v in stages.items() if is_number(v))
        value = figure.read(summary, sweep)
        if is_number(value):
            out[figure.name] = value
    return out


def meaning(name: str) -> str:
    for figure in FIGURES:
        if figure.name == name:
            return figure.meaning
    stage, _, key = name.partition(".")
    text = dict(STAGE_FIGURES).get(key, name)
    return text.format(n=stage.removeprefix("stage_"))


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def configuration_table(runs: list[StudyRun], directory: Path) -> dict:
    """One configuration's runs (in seed order) as its part of table.json."""
    per_seed = {r.seed: run_figures(_read_json(r.run_dir / SUMMARY_FILE),
                                    _read_json(r.run_dir / SWEEP_FILE))
                for r in runs if r.finished}
    names = list(dict.fromkeys(name for figures in per_seed.values() for name in figures))
    figures = {}
    for name in names:
        pairs = [(seed, f[name]) for seed, f in per_seed.items() if name in f]
        figures[name] = {**aggregate([v for _, v in pairs]),
                         "values": [{"seed": s, "value": v} for s, v in pairs]}
    config = runs[0].config
    return {"name": config.name, "file": config.file, "seeds": [r.seed for r in runs],
            "runs": [{"seed": r.seed, "status": r.status or "not started",
                      "run_dir": str(r.run_dir.relative_to(directory)) if r.run_dir else None}
                     for r in runs],
            "figures": figures}


def study_table(plan: StudyPlan) -> dict:
    runs = study_runs(plan)
    configs = [configuration_table([r for r in runs if r.config.name == c.name],
                                   plan.directory) for c in plan.configurations]
    names = dict.fromkeys(n for c in configs for n in c["figures"])
    for c in configs:
        c["test_nll"] = test_nll(c)
    shared = shared_stage_one(runs, configs)
    rows = [endpoint_row(c, finished_files(runs))
            for c in planned_comparisons(plan.analysis_plan, configs)]
    return {"study": plan.directory.name, "seeds": plan.seeds, "confidence": CONFIDENCE,
            "interval": INTERVAL_RULE, "finished_runs": sum(r.finished for r in runs),
            "runs": len(runs), "stage_1_shared": shared,
            "figures": {n: meaning(n) for n in names},
            "configurations": configs, "differences": paired_differences(configs),
            "analysis_plan": plan_summary(plan.analysis_plan),
            "primary": [r for r in rows if r["section"] == "primary"],
            "exploratory": [r for r in rows if r["section"] == "exploratory"]}


def test_nll(config: dict) -> dict:
    """A configuration's test PPL over its seeds on NLL (stats.ppl_interval)."""
    return ppl_interval(list(_by_seed(config, "final.ppl").values()))


def finished_files(runs: list[StudyRun]) -> RunFiles:
    out: RunFiles = {}
    for r in runs:
        if r.finished:
            out.setdefault(r.config.name, {})[r.seed] = (_read_json(r.run_dir / SUMMARY_FILE),
                                                         _read_json(r.run_dir / SWEEP_FILE))
    return out


def planned_comparisons(record: Optional[dict], configs: list[dict]) -> list[Comparison]:
    """The plan's comparisons, then each later configuration's test NLL against the first's
    (exploratory) unless the plan has it already."""
    planned = comparisons((record or {}).get("content"))
    have = {(c.configuration, c.against, c.endpoint) for c in planned}
    first = configs[0]["name"] if configs else None
    return planned + [Comparison("exploratory", f"{c['name']} vs {first}", c["name"], first,
                                 "test_nll") for c in configs[1:]
                      if (c["name"], first, "test_nll") not in have]


def paired_differences(configs: list[dict]) -> list[dict]:
    """Each later configuration's PAIRED figures minus the first's, at every seed both
    finished; aggregated like any figure."""
    if not configs:
        return []
    reference, out = configs[0], []
    for config in configs[1:]:
        for name in PAIRED:
            mine = _by_seed(config, name)
            theirs = _by_seed(reference, name)
            pairs = [(seed, mine[seed] - theirs[seed]) for seed in mine if seed in theirs]
            if name == "final.macs_per_token":
                plain = _by_seed(reference, "plain_macs_per_token")
                _add_difference(out, config, reference, name, pairs)
                name, pairs = HONEST_COST_DIFFERENCE, [(s, d / plain[s]) for s, d in pairs
                                                       if plain.get(s)]
            _add_difference(out, config, reference, name, pairs)
    return out


def _add_difference(out: list, config: dict, reference: dict, name: str, pairs: list) -> None:
    if pairs:
        out.append({"configuration": config["name"], "against": reference["name"],
                    "figure": name, **aggregate([d for _, d in pairs]),
                    "values": [{"seed": s, "value": d} for s, d in pairs]})


def _by_seed(config: dict, name: str) -> dict:
    return seed_values(config["figures"].get(name) or {"values": []})


def seed_values(figure: dict) -> dict:
    """A figure's (or a difference's) per-seed values, {seed: value}."""
    return {v["seed"]: v["value"] for v in figure["values"]}


def write_tables(plan: StudyPlan) -> dict:
    """table.json, table.csv and table.md from the runs finished so far; the table."""
    table = study_table(plan)
    atomic_write_json(plan.directory / "table.json", table)
    for name, text in (("table.csv", table_csv(table)), ("table.md", table_markdown(table))):
        atomic_write(plan.directory / name, lambda f, t=text: f.write(t.encode()))
    return table


def table_csv(table: dict) -> str:
    """One row per configuration and figure; seed+k: the run with seed run.seed + k."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    offsets = [f"seed+{k}" for k in range(table["seeds"])]
    writer.writerow(["configuration", "figure", "n", "mean", "sd", "ci95_half_width",
                     "ci95_low", "ci95_high", *offsets])
    for config in table["configurations"]:
        for name, f in config["figures"].items():
            by_seed = seed_values(f)
            per_seed = [by_seed.get(seed) for seed in config["seeds"]]
            writer.writerow([config["name"], name, f["n"], *(_csv(f[k]) for k in (
                "mean", "sd", "half_width", "low", "high")), *map(_csv, per_seed)])
    seeds = {c["name"]: c["seeds"] for c in table["configurations"]}
    for d in table.get("differences") or []:  # configuration "A - B": paired by seed
        by_seed = seed_values(d)
        writer.writerow([f"{d['configuration']} - {d['against']}", d["figure"], d["n"],
                         *(_csv(d[k]) for k in ("mean", "sd", "half_width", "low", "high")),
                         *(_csv(by_seed.get(s)) for s in seeds[d["configuration"]])])
    for config in table["configurations"]:  # figure test_nll: ln of final.ppl, per seed
        nlls = {s: math.log(v) for s, v in _by_seed(config, "final.ppl").items() if v > 0}
        writer.writerow([config["name"], "test_nll", *_csv_spread(nlls, config["seeds"])])
    for row in [*table.get("primary", []), *table.get("exploratory", [])]:
        writer.writerows(endpoint_csv(row, seeds[row["configuration"]]))
    return out.getvalue()


def endpoint_csv(row: dict, seeds: list) -> list[list]:
    """A comparison's rows: "A - B", "<section>:<endpoint>[.<signal>]" and the difference per
    seed; an NLL endpoint's also "...ppl_ratio": exp(mean) in [exp(low), exp(high)]."""
    figure = f"{row['section']}:{row['endpoint']}" + (f".{row['signal']}" if row["signal"] else "")
    pair = f"{row['configuration']} - {row['against']}"
    diffs = {v["seed"]: v["diff"] for v in row["values"]}
    rows = [[pair, figure, *_csv_spread(diffs, seeds)]]
    if row["on"] == "nll":
        rows.append([pair, f"{figure}.ppl_ratio", row["n"], _csv(row["ratio"]), "", "",
                     _csv(row["ratio_lo"]), _csv(row["ratio_hi"]),
                     *(_csv(math.exp(diffs[s]) if s in diffs else None) for s in seeds)])
    return rows


def _csv_spread(by_seed: dict, seeds: list) -> list:
    """n, mean, sd, half-width, low, high and the per-seed values, as CSV cells."""
    f = aggregate([by_seed[s] for s in seeds if s in by_seed])
    return [f["n"], *(_csv(f[k]) for k in ("mean", "sd", "half_width", "low", "high")),
            *(_csv(by_seed.get(s)) for s in seeds)]


def _csv(x: Optional[float]) -> str:
    return "" if x is None else repr(x)


def number(x: Optional[float]) -> str:
    """Four significant digits, thousands grouped from 1,000 on."""
    if x is None:
        return "–"
    if not math.isfinite(x):
        return str(x)
    return f"{x:,.1f}" if abs(x) >= 1000 else f"{x:.4g}"


UNITS = (("training_macs", 1e12, " T"), ("selection_macs", 1e12, " T"),
         ("total_macs", 1e12, " T"), ("macs_per_token", 1e6, " M"))  # table.md only


def shown(name: str, x: Optional[float]) -> str:
    """number(x) in the figure's unit: training, selection and total MACs in tera, MACs per
    token in mega."""
    for suffix, scale, unit in UNITS:
        if name.endswith(suffix) and x is not None and math.isfinite(x):
            return f"{x / scale:,.4g}{unit}"
    return number(x)


def _with_interval(f: Optional[dict], name: str = "") -> str:
    if f is None:
        return "–"
    spread = f" ± {shown(name, f['half_width'])}" if f["half_width"] is not None else ""
    return f"{shown(name, f['mean'])}{spread} (n={f['n']})"


def table_markdown(table: dict) -> str:
    configs = table["configurations"]
    lines = [f"# Study {table['study']}", "",
             f"{table['seeds']} seeds per configuration (its run.seed + 0 … "
             f"{table['seeds'] - 1}); {table['finished_runs']} of {table['runs']} runs "
             f"finished. Mean ± the half-width of the 95 % interval ({table['interval']}).",
             *primary_markdown(table), *exploratory_markdown(table), "", FIGURES_INTRO,
             "", "| figure | " + " | ".join(c["name"] for c in configs) + " |",
             "|---|" + "---|" * len(configs)]
    for name in table["figures"]:
        cells = [_with_interval(c["figures"].get(name), name) for c in configs]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += _shared_markdown(table.get("stage_1_shared") or [])
    lines += _differences_markdown(table.get("differences") or [])
    for c in configs:
        lines += ["", f"## {c['name']} ({c['file']}; seeds {', '.join(map(str, c['seeds']))})",
                  "", "| figure | n | mean | sd | 95 % interval | per seed |",
                  "|---|---|---|---|---|---|"]
        for name, f in c["figures"].items():
            lines.append(f"| {name} | {_spread_cells(f, name)} |")
    return "\n".join(lines) + "\n"


def study_overview(table: dict) -> str:
    """What a finished study prints: table.md without its per-configuration sections."""
    sections = table_markdown(table).split("\n## ")
    kept = [f"## {x.rstrip()}" for x in sections[1:]
            if x.startswith(("Primary endpoints", "Exploratory", "Paired by seed"))]
    return "\n\n".join([sections[0].rstrip(), *kept])


def _spread_cells(f: dict, name: str) -> str:
    """n | mean | sd | 95 % interval | per seed, in the figure's unit."""
    interval = "–" if f["low"] is None else f"{shown(name, f['low'])} … {shown(name, f['high'])}"
    seeds = ", ".join(f"{v['seed']}: {shown(name, v['value'])}" for v in f["values"])
    return f"{f['n']} | {shown(name, f['mean'])} | {shown(name, f['sd'])} | {interval} | {seeds}"


def _differences_markdown(differences: list[dict]) -> list[str]:
    if not differences:
        return []
    lines = ["", f"## Paired by seed: each configuration minus {differences[0]['against']}",
             "", "An interval that excludes 0 separates the two.", "",
             "| configuration | figure | n | mean | sd | 95 % interval | per seed |",
             "|---|---|---|---|---|---|---|"]
    for d in differences:
        lines.append(f"| {d['configuration']} | {d['figure']} | {_spread_cells(d, d['figure'])} |")
    return lines


# -- on NLL: the plan's primary endpoints, and the exploratory rest -------------------------

ENDPOINT_RULE = ("the difference of mean NLL (ln PPL), configuration minus against, paired by "
                 "seed, ± the half-width of its 95 % interval (n), and the PPL ratio "
                 "exp(difference) [exp(low), exp(high)]: an interval excluding 1 separates "
                 "the two")


def primary_markdown(table: dict) -> list[str]:
    plan = table.get("analysis_plan")
    if not plan:
        return []
    before = "before any run had finished" if not plan.get("finished_runs") else \
        f"after {plan['finished_runs']} of {plan.get('runs')} runs had finished"
    exit_ = plan.get("exit") or {}
    chosen = (f" Exit quantile {exit_['quantile']:g}, chosen {exit_['chosen_on']}."
              if exit_ else "")
    return ["", f"## Primary endpoints (fixed in {plan['path']} sha256:{plan['sha256'][:12]})",
            "", f"Plan {plan['path']} (sha256:{plan['sha256']}), recorded {plan['recorded_at']} "
            f"{before}.{chosen} Each row: {ENDPOINT_RULE}.", "",
            *endpoint_rows_markdown(table.get("primary") or [])]


def exploratory_markdown(table: dict) -> list[str]:
    why = ("Not fixed in the analysis plan." if table.get("analysis_plan") else
           "No analysis plan: every comparison here is exploratory.")
    lines = ["", "## Exploratory", "", f"{why} Each configuration's test NLL (ln PPL): mean ± "
             "the half-width of its 95 % interval (n), and its PPL as the geometric mean "
             "exp(mean) [exp(low), exp(high)].", "",
             "| configuration | test NLL | test PPL (geometric mean) [95 %] |", "|---|---|---|"]
    for c in table["configurations"]:
        f = c.get("test_nll") or test_nll(c)
        lines.append(f"| {c['name']} | {_nll_cell(f['mean_nll'], f['half_nll'], f['n'])} | "
                     f"{_ppl_cell(f['ppl'], f['ppl_lo'], f['ppl_hi'])} |")
    rows = table.get("exploratory") or []
    if rows:
        lines += ["", f"Comparisons: {ENDPOINT_RULE} (a study figure's row: its own "
                  "difference, no ratio).", "", *endpoint_rows_markdown(rows)]
    return lines


FIGURES_INTRO = ("Every figure, arithmetic mean ± the half-width of its 95 % interval (a PPL's "
                 "can reach below 0 with few seeds: the NLL rows above are the interval to "
                 "quote):")


def endpoint_rows_markdown(rows: list[dict]) -> list[str]:
    lines = ["| comparison | configuration − against | endpoint | difference ± 95 % (n) | "
             "PPL ratio [95 %] | seeds missing |", "|---|---|---|---|---|---|"]
    for r in rows:
        endpoint = r["endpoint"] + (f" ({r['signal']})" if r["signal"] else "")
        if r["on"] == "nll":
            diff = _nll_cell(r["diff"], r["half"], r["n"], signed=True)
        else:
            diff = (f"{shown(r['endpoint'], r['diff'])} ± {shown(r['endpoint'], r['half'])} "
                    f"(n={r['n']})" if r["half"] is not None else
                    f"{shown(r['endpoint'], r['diff'])} (n={r['n']})")
        missing = "; ".join(f"{m['seed']}: {m['why']}" for m in r["missing"]) or "–"
        lines.append(f"| {r['name']} | {r['configuration']} − {r['against']} | {endpoint} | "
                     f"{diff} | {_ppl_cell(r['ratio'], r['ratio_lo'], r['ratio_hi'])} | "
                     f"{missing} |")
    return lines


def _nll_cell(mean: Optional[float], half: Optional[float], n: int, signed=False) -> str:
    if mean is None:
        return f"– (n={n})"
    shown_mean = f"{mean:+.4f}" if signed else f"{mean:.4f}"
    return f"{shown_mean} ± {half:.4f} (n={n})" if half is not None else f"{shown_mean} (n={n})"


def _ppl_cell(value: Optional[float], low: Optional[float], high: Optional[float]) -> str:
    if value is None:
        return "–"
    return number(value) if low is None else f"{number(value)} [{number(low)}, {number(high)}]"


# -- stage 1 shared (share.py) ---------------------------------------------------------------

def shared_stage_one(runs: list[StudyRun], configs: list[dict]) -> list[dict]:
    """The runs that took their stage 1 from another run of the study (their summary's
    stage_1_shared_from), as {"run": "config@seed", "from": "config@seed"} (a donor outside
    the study: its directory); each configuration's run entry gets "stage_1_shared_from"."""
    label = {r.run_dir.parts[-3:]: f"{r.config.name}@{r.seed}" for r in runs if r.run_dir}
    found = {}
    for r in runs:
        donor = _read_json(r.run_dir / SUMMARY_FILE).get(SHARED_FROM) if r.run_dir else None
        if donor:
            found[(r.config.name, r.seed)] = label.get(Path(donor).parts[-3:], donor)
    for c in configs:
        for entry in c["runs"]:
            entry["stage_1_shared_from"] = found.get((c["name"], entry["seed"]))
    return [{"run": f"{name}@{seed}", "from": donor} for (name, seed), donor in found.items()]


def _shared_markdown(shared: list[dict]) -> list[str]:
    if not shared:
        return []
    return ["", "stage 1 shared: " + ", ".join(f"{s['run']} from {s['from']}" for s in shared)
            + " (the same stage-1 settings at the seed: trained once, the same figures)"]
