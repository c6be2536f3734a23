"""A study's table.json as the tables of docs/RESULTS.md: one row per configuration (test PPL,
accuracy, honest cost, training compute, seconds per run), the within-run differences from
the stage-1 model, and the differences paired by seed with the first configuration. Every
cell is mean ± the half-width of the 95 % interval (n), as the study computed them.
With --against NAME, also every configuration's test PPL (as run, at the exit classifier's
quantile 0.1, and its stage-1 model alone) and training compute minus NAME's, paired by seed
across runs: the answer to "does it beat that baseline?". With --sweep NAME, NAME's threshold
sweep over its seeds: each signal's test PPL and honest cost at a few quantiles.

    python bench/study_results.py [--against NAME] [--sweep NAME] STUDY_DIR [STUDY_DIR ...]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from ashem_engine.rundir import SWEEP_FILE
from ashem_engine.stats import aggregate
from ashem_engine.study import latest_run_dir
from ashem_engine.study_table import seed_values

MAIN = (("final.ppl", "test PPL", 1, "{:,.1f}"), ("final.accuracy", "accuracy %", 100, "{:.2f}"),
        ("final.honest_cost", "honest cost", 1, "{:.3f}"),
        ("training_macs", "training TMACs", 1e-12, "{:.1f}"))
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
    out += ["", "Within each run, PPL minus its own stage-1 model's on the same split:", "",
            "| configuration | " + " | ".join(label for _, label in WITHIN) + " |",
            "|---|" + "---|" * len(WITHIN)]
    for c in configs:
        out.append(f"| {c['name']} | " + " | ".join(cell(c["figures"].get(k))
                                                   for k, _ in WITHIN) + " |")
    differences = table.get("differences") or []
    if differences:
        out += ["", f"Paired by seed, each configuration minus {differences[0]['against']}:", "",
                "| configuration | test PPL | honest cost | training TMACs |", "|---|---|---|---|"]
        for name in dict.fromkeys(d["configuration"] for d in differences):
            by = {d["figure"]: d for d in differences if d["configuration"] == name}
            out.append(f"| {name} | {cell(by.get('final.ppl'))} | "
                       f"{cell(by.get('final.honest_cost'), 1, '{:+.3f}')} | "
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


def paired_cell(ours: dict[int, float], theirs: dict[int, float], scale: float = 1) -> str:
    seeds = sorted(ours.keys() & theirs.keys())
    if not seeds:
        return "–"
    return cell(aggregate([(ours[s] - theirs[s]) * scale for s in seeds]))


def against(table: dict, name: str) -> str:
    configs = {c["name"]: c["figures"] for c in table["configurations"]}
    if name not in configs:
        raise SystemExit(f"--against {name}: not a configuration of {table['study']} "
                         f"(it has {', '.join(configs)})")
    base = configs[name]
    base_ppl, base_macs = per_seed(base, "final.ppl"), per_seed(base, "training_macs")
    kinds = list(routed_ppls(base))
    out = [f"Paired by seed, minus {name}'s test PPL and training compute:", "",
           "| configuration | " + " | ".join(f"PPL, {k}" for k in kinds)
           + " | training TMACs |", "|---|" + "---|" * (len(kinds) + 1)]
    for other, figures in configs.items():
        if other == name:
            continue
        ppls = routed_ppls(figures)
        out.append(f"| {other} | " + " | ".join(
            paired_cell(ppls[k], base_ppl) for k in kinds) + " | "
            + paired_cell(per_seed(figures, "training_macs"), base_macs, 1e-12) + " |")
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
    parser.add_argument("directories", nargs="+", metavar="STUDY_DIR")
    args = parser.parse_args(argv)
    for d in args.directories:
        table = json.loads((Path(d) / "table.json").read_text(encoding="utf-8"))
        print(f"### {table['study']}: {table['finished_runs']} of {table['runs']} runs\n")
        print(tables(table) + "\n")
        if args.against:
            print(against(table, args.against) + "\n")
        if args.sweep:
            print(sweep_table(Path(d), args.sweep) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
