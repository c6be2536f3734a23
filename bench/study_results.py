"""A study's table.json as the tables of docs/RESULTS.md: one row per configuration (test PPL,
accuracy, MACs per token, training, selection and total compute, seconds per run), the
within-run differences from the stage-1 model, and the differences paired by seed with the
first configuration. Every cell is mean ± the half-width of the 95 % interval (n), as the
study computed them.
With --against NAME, also every configuration's test PPL (as run, at the exit classifier's
quantile 0.1, and its stage-1 model alone) and training compute minus NAME's, paired by seed
across runs: the answer to "does it beat that baseline?". With --sweep NAME, NAME's threshold
sweep over its seeds: each signal's test PPL and honest cost at a few quantiles.
First come the study's primary endpoints when it has an analysis plan (study_plan.py) and each
configuration's test NLL with its PPL as the geometric mean [95 %]; everything after them is
exploratory. Last, for a study directory with its runs, the compute-matched view: validation
NLL at a grid of cumulative training MACs (--grid TMACS,..., else the plan's, else 8 equal
steps), mean ± 95 % over seeds; --compute-json also writes it to STUDY_DIR/compute_matched.json.

    python bench/study_results.py [--against NAME] [--sweep NAME] [--grid TMACS,...]
                                  [--compute-json] STUDY_DIR [STUDY_DIR ...]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from ashem_engine.compare import ComparisonError
from ashem_engine.rundir import SWEEP_FILE, atomic_write_json
from ashem_engine.stats import aggregate, paired_nll_difference
from ashem_engine.study import is_study, latest_run_dir
from ashem_engine.study_curves import compute_matched
from ashem_engine.study_table import (HONEST_COST_DIFFERENCE, exploratory_markdown,
                                      primary_markdown, seed_values)

MAIN = (("final.ppl", "test PPL", 1, "{:,.1f}"), ("final.accuracy", "accuracy %", 100, "{:.2f}"),
        ("final.macs_per_token", "MACs/token (M)", 1e-6, "{:.3f}"),
        ("training_macs", "training TMACs", 1e-12, "{:.1f}"),
        ("selection_macs", "selection TMACs", 1e-12, "{:.1f}"),
        ("total_macs", "total TMACs", 1e-12, "{:.1f}"))
# under the main table: what its compute columns hold (summary.json compute_macs)
COMPUTE_NOTE = ("Selection: every epoch's validation and hard PPL, and the mining passes. "
                "Total: training, selection and, in the token context, the part of a mining "
                "pass that made the hidden states its stage trains on (charged as training, "
                "not selection).")
WITHIN = (("final.ppl_minus_stage_1_alone", "as run"),
          ("sweep.classifier.q0.10.ppl_minus_stage_1_alone", "classifier, q 0.1"),
          ("sweep.softmax.q0.10.ppl_minus_stage_1_alone", "max-softmax, q 0.1"),
          ("sweep.classifier.q0.50.ppl_minus_stage_1_alone", "classifier, q 0.5"),
          ("sweep.all_deep.ppl_minus_stage_1_alone", "every token deep"))


def cell(f: dict | None, scale: float = 1, fmt: str = "{:+.1f}") -> str:
    if not f or f.get("mean") is None:
        return "–"
    mean = fmt.format(f["mean"] * scale)
    if f.get("half_width") is None:
        return f"{mean} (n={f['n']})"
    return f"{mean} ± {fmt.replace('+', '').format(f['half_width'] * scale)} (n={f['n']})"


def seconds(f: dict | None) -> str:
    if not f or not f.get("values"):
        return "–"
    return f"{statistics.median(v['value'] for v in f['values']) / 60:.1f}"


def tables(table: dict) -> str:
    configs = table["configurations"]
    out = ["| configuration | " + " | ".join(label for _, label, _, _ in MAIN)
           + " | minutes per run (median) |", "|---|" + "---|" * (len(MAIN) + 1)]
    for c in configs:
        f = c["figures"]
        out.append(f"| {c['name']} | " + " | ".join(
            cell(f.get(key), scale, fmt) for key, _, scale, fmt in MAIN)
            + f" | {seconds(f.get('seconds'))} |")
    out += ["", COMPUTE_NOTE]
    out += ["", "Within each run, PPL minus its own stage-1 model's on the same split:", "",
            "| configuration | " + " | ".join(label for _, label in WITHIN) + " |",
            "|---|" + "---|" * len(WITHIN)]
    for c in configs:
        out.append(f"| {c['name']} | " + " | ".join(cell(c["figures"].get(k))
                                                   for k, _ in WITHIN) + " |")
    differences = table.get("differences") or []
    if differences:
        reference = differences[0]["against"]
        out += ["", f"Paired by seed, each configuration minus {reference} (MACs per token "
                f"absolute; honest cost as a fraction of {reference}'s plain model's):", "",
                "| configuration | test PPL | MACs/token (M) | honest cost | training TMACs |",
                "|---|---|---|---|---|"]
        for name in dict.fromkeys(d["configuration"] for d in differences):
            by = {d["figure"]: d for d in differences if d["configuration"] == name}
            out.append(f"| {name} | {cell(by.get('final.ppl'))} | "
                       f"{cell(by.get('final.macs_per_token'), 1e-6, '{:+.3f}')} | "
                       f"{cell(by.get(HONEST_COST_DIFFERENCE), 1, '{:+.3f}')} | "
                       f"{cell(by.get('training_macs'), 1e-12)} |")
    return "\n".join(out)


def per_seed(figures: dict, key: str) -> dict[int, float]:
    return seed_values(figures.get(key) or {"values": []})


def routed_ppls(figures: dict) -> dict[str, dict[int, float]]:
    """A configuration's test PPL per seed: as run, at the exit classifier's quantile 0.1,
    and its stage-1 model alone (the last two rebuilt from the within-run differences)."""
    alone = per_seed(figures, "stage_1_alone.ppl")
    gain = per_seed(figures, "sweep.classifier.q0.10.ppl_minus_stage_1_alone")
    return {"as run": per_seed(figures, "final.ppl"),
            "classifier, q 0.1": {s: alone[s] + gain[s] for s in alone.keys() & gain.keys()},
            "stage-1 model alone": alone}


def paired_cell(ours: dict[int, float], theirs: dict[int, float], scale: float = 1,
                fmt: str = "{:+.1f}") -> str:
    seeds = sorted(ours.keys() & theirs.keys())
    if not seeds:
        return "–"
    return cell(aggregate([(ours[s] - theirs[s]) * scale for s in seeds]), 1, fmt)


def against(table: dict, name: str) -> str:
    configs = {c["name"]: c["figures"] for c in table["configurations"]}
    if name not in configs:
        raise SystemExit(f"--against {name}: not a configuration of {table['study']} "
                         f"(it has {', '.join(configs)})")
    base = configs[name]
    base_ppl, base_macs = per_seed(base, "final.ppl"), per_seed(base, "training_macs")
    kinds = list(routed_ppls(base))
    out = [f"Paired by seed, minus {name}'s test PPL and training compute; then on NLL (as "
           f"run) with the PPL ratio, and MACs per token with the honest cost as a fraction "
           f"of {name}'s plain model's:", "",
           "| configuration | " + " | ".join(f"PPL, {k}" for k in kinds)
           + " | training TMACs | NLL, as run | PPL ratio [95 %] | MACs/token (M) | "
           "honest cost |", "|---|" + "---|" * (len(kinds) + 5)]
    for other, figures in configs.items():
        if other == name:
            continue
        ppls = routed_ppls(figures)
        out.append(f"| {other} | " + " | ".join(
            paired_cell(ppls[k], base_ppl) for k in kinds) + " | "
            + paired_cell(per_seed(figures, "training_macs"), base_macs, 1e-12) + " | "
            + nll_cells(ppls["as run"], base_ppl) + " | " + cost_cells(figures, base) + " |")
    return "\n".join(out)


def nll_cells(ours: dict[int, float], theirs: dict[int, float]) -> str:
    """The paired NLL difference ± 95 % (n) | the PPL ratio [low, high]."""
    d = paired_nll_difference(ours, theirs)
    if d["diff"] is None:
        return "– | –"
    spread = f" ± {d['half']:.4f}" if d["half"] is not None else ""
    ratio = f"{d['ratio']:.4f}" + (f" [{d['ratio_lo']:.4f}, {d['ratio_hi']:.4f}]"
                                   if d["ratio_lo"] is not None else "")
    return f"{d['diff']:+.4f}{spread} (n={d['n']}) | {ratio}"


def cost_cells(figures: dict, base: dict) -> str:
    """MACs per token minus the base's (M) | that difference over the base's plain model."""
    ours, theirs = per_seed(figures, "final.macs_per_token"), per_seed(base, "final.macs_per_token")
    plain = per_seed(base, "plain_macs_per_token")
    relative = {s: ours[s] / plain[s] for s in ours if plain.get(s)}
    base_relative = {s: theirs[s] / plain[s] for s in theirs if plain.get(s)}
    return (paired_cell(ours, theirs, 1e-6, "{:+.3f}") + " | "
            + paired_cell(relative, base_relative, 1, "{:+.3f}"))


def nll_sections(table: dict) -> str:
    """The primary endpoints (with a plan) and each configuration's test NLL, as table.md
    has them, under this script's heading level."""
    lines = [*primary_markdown(table), *exploratory_markdown(table)]
    return "\n".join(f"#### {x[3:]}" if x.startswith("## ") else x for x in lines).strip()


def compute_matched_table(view: dict) -> str:
    """Validation NLL ± 95 % (n) and the PPL [95 %] per configuration at each grid point."""
    names = [c["name"] for c in view["configurations"]]
    out = [f"Compute-matched: {view['rule']}; PPL as exp of those.", "",
           "| training TMACs | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for k, macs in enumerate(view["grid"]):
        cells = []
        for c in view["configurations"]:
            b = c["band"][k]
            if b["nll_mean"] is None:
                cells.append("–")
                continue
            half = "" if b["nll_lo"] is None else f" ± {b['nll_mean'] - b['nll_lo']:.4f}"
            ppl = f"{b['ppl_mean']:,.1f}" + ("" if b["ppl_lo"] is None else
                                            f" [{b['ppl_lo']:,.1f}, {b['ppl_hi']:,.1f}]")
            cells.append(f"{b['nll_mean']:.4f}{half} (n={b['n']}), PPL {ppl}")
        out.append(f"| {macs / 1e12:,.4g} | " + " | ".join(cells) + " |")
    return "\n".join(out)


SWEEP_QUANTILES = (0.0, 0.1, 0.25, 0.5, 0.75, 1.0)


def sweep_files(directory: Path, name: str) -> list[Path]:
    latest = (latest_run_dir(seed) for seed in sorted(directory.glob(f"runs/{name}/seed-*")))
    found = [run / SWEEP_FILE for run in latest if run and (run / SWEEP_FILE).is_file()]
    if not found:
        raise SystemExit(f"--sweep {name}: no finished run of {name} has a sweep.json "
                         f"under {directory}/runs")
    return found


def sweep_table(directory: Path, name: str) -> str:
    """Per (series, quantile): PPL mean ± interval over seeds, honest cost's mean."""
    points: dict[tuple[str, object], list[dict]] = {}
    for path in sweep_files(directory, name):
        for series in json.loads(path.read_text(encoding="utf-8"))["series"]:
            for point in series["points"]:
                q = point.get("quantile")
                if q is None or any(abs(q - keep) < 1e-9 for keep in SWEEP_QUANTILES):
                    points.setdefault((series["name"], q), []).append(point)
    out = [f"{name}'s threshold sweep on its evaluation split, over its seeds:", "",
           "| series | quantile sent deep | test PPL | honest cost |", "|---|---|---|---|"]
    for (series, q), found in points.items():
        ppl = aggregate([p["ppl"] for p in found])
        cost = statistics.fmean(p["honest_cost"] for p in found)
        quantile = "–" if q is None else f"{q:.2f}"
        out.append(f"| {series} | {quantile} | {cell(ppl, 1, '{:,.1f}')} | {cost:.3f} |")
    return "\n".join(out)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--against", metavar="NAME")
    parser.add_argument("--sweep", metavar="NAME")
    parser.add_argument("--grid", type=grid_tmacs, metavar="TMACS,...",
                        help="the compute-matched grid, in tera MACs of training")
    parser.add_argument("--compute-json", action="store_true",
                        help="write the compute-matched view to STUDY_DIR/compute_matched.json")
    parser.add_argument("directories", nargs="+", metavar="STUDY_DIR")
    args = parser.parse_args(argv)
    for d in args.directories:
        table = json.loads((Path(d) / "table.json").read_text(encoding="utf-8"))
        print(f"### {table['study']}: {table['finished_runs']} of {table['runs']} runs\n")
        print(nll_sections(table) + "\n")
        print(tables(table) + "\n")
        if args.against:
            print(against(table, args.against) + "\n")
        if args.sweep:
            print(sweep_table(Path(d), args.sweep) + "\n")
        if is_study(d):
            compute_view(Path(d), args.grid, args.compute_json)
    return 0


def grid_tmacs(text: str) -> list[float]:
    try:
        grid = [float(x) * 1e12 for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give numbers, comma-separated") from None
    if not grid or any(m <= 0 for m in grid) or sorted(set(grid)) != grid:
        raise argparse.ArgumentTypeError(f"{text!r}: give positive numbers, increasing")
    return grid


def compute_view(directory: Path, grid: list[float] | None, write: bool) -> None:
    try:
        view = compute_matched(directory, grid)
    except ComparisonError as e:
        raise SystemExit(f"{directory}: {e}") from None
    if view["grid"]:
        print(compute_matched_table(view) + "\n")
    if write:
        atomic_write_json(directory / "compute_matched.json", view)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
