"""The comparison behind docs/RESULTS.md: ASHEM under the spec's and the sound protocol,
against the 4-layer model trained from scratch and the stage-1 2-layer model, all reported
on the test split with a threshold sweep of PPL against honest cost.

    python bench/protocols.py [--data DIR] [--runs-dir DIR] [--device cpu|cuda|auto]
                              [--only NAME ...] [--csv FILE] [--markdown FILE]
    python bench/protocols.py --table RUN_DIR ...      # only the table, from finished runs

Runs (each a normal ashem run; --only picks some):
  spec         settings.toml (the spec's protocol), reported on test instead of validation
  sound        bench/configs/sound-protocol.toml (mine train, report test, sequence context,
               as-trained inference, frozen head)
  sound-token  the sound protocol with the spec's token context
  scratch-4    bench/configs/scratch-4-layers.toml, reported on test
"""
from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

from ashem_engine.compare import ComparisonError, load_comparison
from ashem_engine.control import RunControl
from ashem_engine.run import run_ashem
from ashem_engine.settings import load_settings
from ashem_engine.sinks import build_sinks

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "wikitext-2-raw"
CONFIGS = ROOT / "bench" / "configs"

SUITE = {
    "spec": (ROOT / "settings.toml", ["evaluation.split=test"]),
    "sound": (CONFIGS / "sound-protocol.toml", []),
    "sound-token": (CONFIGS / "sound-protocol.toml", ["stages.2.context=token"]),
    "scratch-4": (CONFIGS / "scratch-4-layers.toml", ["evaluation.split=test"]),
}
TABLE_QUANTILES = (0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0)


def run_suite(names, data, runs_dir, device, extra) -> list[Path]:
    dirs = []
    for name in names:
        path, overrides = SUITE[name]
        settings = load_settings(path, [*overrides, f"run.name={name}", "run.pause_at=[]",
                                        f"data.path={data}", f"run.runs_dir={runs_dir}",
                                        f"run.device={device}", *extra])
        started = time.perf_counter()
        result = run_ashem(settings, build_sinks(progress=sys.stdout),
                           RunControl(hold_at_boundaries=False))
        print(f"[{name}] {result.status} in {time.perf_counter() - started:.1f}s "
              f"-> {result.run_dir}", flush=True)
        if result.status != "finished":
            raise SystemExit(f"run {name} {result.status}: "
                             f"{result.error.message if result.error else ''}")
        dirs.append(result.run_dir)
    return dirs


def rows(comparison: dict, every_point: bool) -> list[dict]:
    out = []
    for s in comparison["series"]:
        for p in s["points"]:
            q = p["quantile"]
            if not every_point and q is not None and not p["pareto"] and \
                    not any(abs(q - t) < 1e-9 for t in TABLE_QUANTILES):
                continue
            out.append({"run": s["run"], "series": s["name"], "split": s["split"],
                        "q": "" if q is None else f"{q:.2f}", "ppl": p["ppl"],
                        "accuracy": p["accuracy"], "deep": p["deep_ratio"],
                        "spec_cost": p["spec_cost"], "honest_cost": p["honest_cost"],
                        "mmacs": p["macs_per_token"] / 1e6, "pareto": p["pareto"]})
    return out


def markdown(table: list[dict]) -> str:
    lines = ["| run | series | q | PPL | acc. % | deep % | spec cost % | honest cost % "
             "| MMACs/token | Pareto |", "|" + "---|" * 10]
    for r in table:
        lines.append(f"| {r['run']} | {r['series']} | {r['q']} | {r['ppl']:.2f} | "
                     f"{100 * r['accuracy']:.2f} | {100 * r['deep']:.1f} | "
                     f"{100 * r['spec_cost']:.1f} | {100 * r['honest_cost']:.1f} | "
                     f"{r['mmacs']:.3f} | {'✓' if r['pareto'] else ''} |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--runs-dir", default="/tmp/ashem-protocols")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--only", nargs="*", choices=sorted(SUITE), default=list(SUITE))
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--table", nargs="*", metavar="RUN_DIR")
    ap.add_argument("--csv", help="every point of every series, as CSV")
    ap.add_argument("--markdown", help="the summary table, as Markdown")
    args = ap.parse_args()
    dirs = args.table if args.table else run_suite(args.only, args.data, args.runs_dir,
                                                   args.device, args.overrides)
    try:
        comparison = load_comparison(dirs)
    except ComparisonError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    table = markdown(rows(comparison, every_point=False))
    print(table)
    if comparison["mixed_splits"]:
        print(f"warning: runs reported on different splits: {comparison['splits']}")
    if args.markdown:
        Path(args.markdown).write_text(table + "\n", encoding="utf-8")
    if args.csv:
        every = rows(comparison, every_point=True)
        with open(args.csv, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=list(every[0]))
            writer.writeheader()
            writer.writerows(every)
    return 0


if __name__ == "__main__":
    sys.exit(main())
