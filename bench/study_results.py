"""A study's table.json as the tables of docs/RESULTS.md: one row per configuration (test PPL,
accuracy, honest cost, training compute, seconds per run), the within-run differences from
the stage-1 model, and the differences paired by seed with the first configuration. Every
cell is mean ± the half-width of the 95 % interval (n), as the study computed them.

    python bench/study_results.py STUDY_DIR [STUDY_DIR ...]
"""
from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

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


def main(directories: list[str]) -> int:
    for d in directories:
        table = json.loads((Path(d) / "table.json").read_text(encoding="utf-8"))
        print(f"### {table['study']}: {table['finished_runs']} of {table['runs']} runs\n")
        print(tables(table) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
