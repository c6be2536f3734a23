"""A markdown table comparing finished runs from their summary.json files.

    python bench/compare_runs.py runs/<a> runs/<b> ...
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from ashem_engine.rundir import SUMMARY_FILE


def row(run_dir: Path) -> list[str]:
    s = json.loads((run_dir / SUMMARY_FILE).read_text())
    final = s["final"]
    layers = " → ".join(str(st["layers"]) for st in s["stages"])
    epochs = " / ".join(f"{st['best_epoch']} of {st['epochs']}" for st in s["stages"])
    exits = " / ".join(f"{100 * r:.1f}" for r in final["exit_ratios"])
    train = sum(st["seconds"] for st in s["stages"])
    return [s["settings"]["run"]["name"], layers, epochs, final["split"],
            f"{100 * final['accuracy']:.2f}", f"{final['ppl']:.2f}", exits,
            f"{100 * final['compute_cost']:.1f}", f"{100 * final['honest_cost']:.1f}",
            f"{final.get('macs_per_token', float('nan')) / 1e6:.2f}",
            f"{train:.0f}", f"{s['seconds']:.0f}"]


def main(paths: list[str]) -> None:
    header = ["run", "layers", "best epoch of run (per stage)", "split", "acc %", "PPL",
              "exit ratios %", "spec cost %", "honest cost %", "M MACs/token", "train s",
              "wall s"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for p in paths:
        print("| " + " | ".join(row(Path(p))) + " |")


if __name__ == "__main__":
    main(sys.argv[1:])
