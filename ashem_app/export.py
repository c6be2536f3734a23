"""The metrics table (one row per EpochEnded) and its CSV / JSON export.

Everything written is an event field; the JSON adds the stage, mining and evaluation events
as the engine reported them.
"""
from __future__ import annotations

import csv
import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .state import RunView

COLUMNS = ("stage", "epoch", "train_ppl", "val_ppl", "val_acc", "hard_ppl", "shallow_ratio",
           "improved", "patience_counter", "patience", "best_epoch", "best_val_ppl", "seconds",
           "t")


def metrics_rows(view: RunView) -> list[dict[str, Any]]:
    return [{c: getattr(e, c) for c in COLUMNS} for e in view.epochs]


def _plain(event) -> dict[str, Any] | None:
    if event is None:
        return None
    out = asdict(event)
    out.pop("histogram_edges", None)
    out.pop("histogram_counts", None)
    out.pop("zoom_edges", None)
    out.pop("zoom_counts", None)
    return out


def _by_stage(events: dict) -> list[dict[str, Any]]:
    return [_plain(events[stage]) for stage in sorted(events)]


def metrics_document(view: RunView) -> dict[str, Any]:
    started = view.started
    return {
        "run": None if started is None else {
            "name": started.name, "run_dir": started.run_dir, "device": started.device,
            "threads": started.threads, "vocab_size": started.vocab_size,
            "train_tokens": started.train_tokens, "val_tokens": started.val_tokens,
            "test_tokens": started.test_tokens},
        "status": view.status,
        "epochs": metrics_rows(view),
        "stages": _by_stage(view.stage_ended),
        "thresholds": _by_stage(view.threshold_computed),
        "hard_examples": [{k: v for k, v in hard.items() if k != "examples"}
                          for hard in _by_stage(view.hard_collected)],
        "evaluation": _plain(view.evaluation),
        "failed": _plain(view.failed),
    }


def export_metrics(view: RunView, directory: str | os.PathLike, prefix: str = ""
                   ) -> tuple[Path, Path]:
    """Writes <prefix>metrics.csv and <prefix>metrics.json; returns both paths."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    csv_path = directory / f"{prefix}metrics.csv"
    json_path = directory / f"{prefix}metrics.json"
    with open(csv_path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        for row in metrics_rows(view):
            writer.writerow({k: "" if v is None else v for k, v in row.items()})
    with open(json_path, "w", encoding="utf-8") as f:
        json.dump(metrics_document(view), f, indent=2, allow_nan=True)
        f.write("\n")
    return csv_path, json_path
