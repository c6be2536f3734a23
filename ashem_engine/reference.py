"""The spec's figures, the reference implementation's 2-core CPU run (SPEC_NOTES), and the
acceptance bands of the reproduction. Data only: used by the headless table and the bench."""
from __future__ import annotations

from typing import Any, Optional

# key: (label, spec (L4), reference on a 2-core CPU, format)
FIGURES: dict[str, tuple[str, Optional[float], Optional[float], str]] = {
    "stage1_best_val_ppl": ("stage 1 best val PPL", 986.43, 985.59, "{:.2f}"),
    "stage1_best_val_acc": ("stage 1 best val acc %", 16.03, 16.17, "{:.2f}"),
    "stage1_best_epoch": ("stage 1 best epoch", 3, 3, "{:.0f}"),
    "stage1_epochs": ("stage 1 stopped at epoch", 4, 4, "{:.0f}"),
    "threshold": ("threshold", 0.1499, 0.1596, "{:.4f}"),
    "hard_count": ("hard tokens", 32768, 32768, "{:,.0f}"),
    "hard_ratio": ("hard ratio % (of real total)", 50.0, 50.0, "{:.1f}"),
    "hard_mean_confidence": ("hard mean confidence", 0.0653, None, "{:.4f}"),
    "stage1_hard_ppl": ("stage 1 hard PPL", 2763.69, 2854.97, "{:.2f}"),
    "stage2_best_epoch": ("stage 2 best epoch", 7, 8, "{:.0f}"),
    "stage2_epochs": ("stage 2 stopped at epoch", 10, 11, "{:.0f}"),
    "stage2_best_val_ppl": ("stage 2 best val PPL (routed)", 829.78, 767.92, "{:.2f}"),
    "stage2_hard_ppl": ("stage 2 hard PPL", 668.08, 624.65, "{:.2f}"),
    "final_accuracy": ("final accuracy %", 15.77, 15.80, "{:.2f}"),
    "final_ppl": ("final PPL", 829.78, 767.92, "{:.2f}"),
    "shallow_ratio": ("shallow ratio %", 70.4, 72.6, "{:.1f}"),
    "deep_ratio": ("deep ratio %", 29.6, 27.4, "{:.1f}"),
    "compute_cost": ("compute cost % (spec formula)", 64.82, 63.72, "{:.2f}"),
    "stage1_seconds": ("stage 1 seconds", 23.3, 861.0, "{:.1f}"),
    "stage2_seconds": ("stage 2 seconds", 67.9, 933.0, "{:.1f}"),
    "total_seconds": ("whole run seconds", None, 1894.0, "{:.1f}"),
}

# The acceptance bands: (low, high) inclusive, or a set of allowed values.
BANDS: dict[str, Any] = {
    "stage1_best_val_ppl": (986 * 0.95, 986 * 1.05),
    "stage1_best_val_acc": (15.6, 16.6),
    "stage1_best_epoch": {3},
    "stage1_epochs": {4},
    "threshold": (0.135, 0.175),
    "hard_count": {32768},
    "stage1_hard_ppl": (2800 * 0.9, 2800 * 1.1),
    "stage2_best_val_ppl": (730, 870),
    "stage2_hard_ppl": (560, 740),
    "stage2_best_epoch": {7, 8},
    "final_accuracy": (15.3, 16.3),
    "shallow_ratio": (66, 77),
    "compute_cost": (61, 67),
    "total_seconds": (0, 1894 / 2),
}


def figures_from_summary(summary: dict) -> dict[str, Optional[float]]:
    """This run's values for FIGURES, from summary.json (percentages as percentages)."""
    stages = summary.get("stages", [])
    mining = summary.get("mining", [])
    final = summary.get("final") or {}
    s1 = stages[0] if stages else {}
    s2 = stages[1] if len(stages) > 1 else {}
    m1 = mining[0] if mining else {}

    def pct(v):
        return None if v is None else 100 * v

    exit_ratios = final.get("exit_ratios") or [None, None]
    return {
        "stage1_best_val_ppl": s1.get("best_val_ppl"),
        "stage1_best_val_acc": pct(s1.get("best_val_acc")),
        "stage1_best_epoch": s1.get("best_epoch"),
        "stage1_epochs": s1.get("epochs"),
        "threshold": m1.get("threshold"),
        "hard_count": m1.get("count"),
        "hard_ratio": pct(m1.get("ratio")),
        "hard_mean_confidence": m1.get("mean_confidence"),
        "stage1_hard_ppl": m1.get("hard_ppl"),
        "stage2_best_epoch": s2.get("best_epoch"),
        "stage2_epochs": s2.get("epochs"),
        "stage2_best_val_ppl": s2.get("best_val_ppl"),
        "stage2_hard_ppl": s2.get("best_hard_ppl"),
        "final_accuracy": pct(final.get("accuracy")),
        "final_ppl": final.get("ppl"),
        "shallow_ratio": pct(exit_ratios[0]) if len(exit_ratios) > 1 else None,
        "deep_ratio": pct(exit_ratios[-1]) if len(exit_ratios) > 1 else None,
        "compute_cost": pct(final.get("compute_cost")),
        "stage1_seconds": s1.get("seconds"),
        "stage2_seconds": s2.get("seconds"),
        "total_seconds": summary.get("seconds"),
    }


def in_band(key: str, value: Optional[float]) -> Optional[bool]:
    band = BANDS.get(key)
    if band is None or value is None:
        return None
    if isinstance(band, set):
        return value in band
    return band[0] <= value <= band[1]


# Settings that do not change the table's figures: where the data is read from, how the run
# is run and reported (run.precision too: bf16 holds the bands), what the sweep adds.
NOT_FIGURES = ("run", "data.path", "data.train_file", "data.validation_file", "data.test_file",
               "data.hub_name", "data.hub_config", "data.hub_text_column",
               "evaluation.sweep_points", "evaluation.signals", "mining.histogram_bins",
               "mining.top_words", "mining.examples")


def departures(settings: dict) -> list[str]:
    """The dotted keys (stages by number) where a run's settings leave the spec's set-up
    (the defaults), apart from NOT_FIGURES; [] for the spec's own run."""
    from .settings import load_settings
    spec = load_settings(None).to_dict()
    out: list[str] = []

    def walk(ours, theirs, at: str) -> None:
        if at in NOT_FIGURES:
            return
        if isinstance(ours, dict) and isinstance(theirs, dict):
            for key in dict.fromkeys([*theirs, *ours]):
                walk(ours.get(key), theirs.get(key), f"{at}.{key}" if at else key)
        elif at == "stages" and isinstance(ours, list) and isinstance(theirs, list) and \
                len(ours) == len(theirs):
            for n, (a, b) in enumerate(zip(ours, theirs), start=1):
                walk(a, b, f"stages.{n}")
        elif ours != theirs:
            out.append(at)
    walk(settings, spec, "")
    return out


def comparison_rows(summary: dict, banded: bool = True
                    ) -> list[tuple[str, str, str, str, str, str]]:
    """(label, spec, reference CPU, ours, ours - spec, band verdict) per figure; no verdict
    unless `banded` (format_table: the run keeps the spec's set-up)."""
    ours = figures_from_summary(summary)
    rows = []
    for key, (label, spec, cpu, fmt) in FIGURES.items():
        value = ours.get(key)
        shown = ["—" if v is None else fmt.format(v) for v in (spec, cpu, value)]
        diff = "—" if value is None or spec is None else fmt.format(value - spec)
        diff = diff if diff.startswith(("—", "-")) else "+" + diff
        verdict = {True: "in band", False: "OUT", None: ""}[in_band(key, value) if banded
                                                             else None]
        rows.append((label, *shown, diff, verdict))
    return rows


def format_table(summary: dict) -> str:
    header = ("figure", "spec (L4)", "ref (CPU)", "this run", "diff vs spec", "band")
    departed = departures(summary.get("settings", {}))
    rows = [header, *comparison_rows(summary, banded=not departed)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = []
    for n, r in enumerate(rows):
        lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                               for i, (c, w) in enumerate(zip(r, widths))).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    if departed:
        shown = ", ".join(departed[:6]) + (", …" if len(departed) > 6 else "")
        lines.append(f"(not the spec's set-up: {shown}; the spec and reference columns are "
                     f"for orientation only, and no band applies to this run)")
    return "\n".join(lines)
