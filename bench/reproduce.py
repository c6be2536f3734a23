"""The full default run on WikiText-2, checked against the reproduction's acceptance bands.

    python bench/reproduce.py [--data DIR] [--runs-dir DIR] [--json FILE] [--profile]
                              [--set k=v]...

Prints the engine's progress lines, then the table of spec / reference-on-CPU / this run,
the wall time of each stage, and which figures fall inside their bands. Exit code 0 when all
are inside. `--profile`: also where the seconds went (bench/breakdown.py), e.g. with
`--set run.precision=bf16`. Run it on a quiet machine: the timings are the point.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

from ashem_engine.control import RunControl
from ashem_engine.reference import BANDS, figures_from_summary, format_table, in_band
from ashem_engine.run import run_ashem
from ashem_engine.settings import load_settings
from ashem_engine.sinks import build_sinks
from breakdown import install  # bench/breakdown.py, beside this file

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "wikitext-2-raw"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--runs-dir", default="/tmp/ashem-bench-runs")
    ap.add_argument("--json", help="write figures, bands and timings here")
    ap.add_argument("--profile", action="store_true", help="print where the seconds went")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    args = ap.parse_args()
    profile = install() if args.profile else None
    settings = load_settings(ROOT / "settings.toml", [
        f"data.path={args.data}", f"run.runs_dir={args.runs_dir}", "run.name=reproduce",
        *args.overrides])
    started = time.perf_counter()
    result = run_ashem(settings, build_sinks(progress=sys.stdout),
                       RunControl(hold_at_boundaries=False))
    wall = time.perf_counter() - started
    if result.status != "finished":
        print(f"run {result.status}: {result.error.message if result.error else ''}")
        return 1
    figures = figures_from_summary(result.summary)
    verdicts = {k: in_band(k, figures.get(k)) for k in BANDS}
    print()
    print(format_table(result.summary))
    print(f"\nwall time {wall:.1f}s on {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}")
    if profile is not None:
        print(f"\nwhere the seconds went ({settings.run.precision}):\n{profile.table(wall)}")
    outside = [k for k, ok in verdicts.items() if ok is False]
    print("all figures inside their bands" if not outside else f"OUTSIDE: {', '.join(outside)}")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "figures": figures, "in_band": verdicts, "wall_seconds": wall,
            "run_dir": str(result.run_dir), "machine": result.summary.get("machine"),
            "stages": result.summary["stages"], "final": result.summary["final"],
            "profile": profile.seconds if profile is not None else None},
            indent=2, default=str))
    return 0 if not outside else 2


if __name__ == "__main__":
    sys.exit(main())
