"""Where a cancelled or killed run goes on: progress.pt, read back as a typed ResumePoint. The
pipeline rewrites it after every epoch, mining and stage, as vars(ResumePoint) (its old keys)."""
from __future__ import annotations

import json
import os
from dataclasses import MISSING, dataclass, fields
from pathlib import Path
from typing import Optional

import torch

from .rundir import (PROGRESS_FILE, SETTINGS_FILE, SUMMARY_FILE, CheckpointError,
                     load_checkpoint)
from .settings import Settings, settings_from_dict


class ResumeError(Exception):
    """A run directory that cannot be resumed. str(error) is one line for a person."""


@dataclass
class ResumePoint:
    stage: int  # 1-based
    epoch: int  # epochs of `stage` finished (0 after the mining that starts it)
    stage_done: bool
    exit_layers: list
    thresholds: list
    rng: torch.Tensor  # torch's random state
    seconds_before: float  # run time up to here, over every attempt
    model: Optional[dict] = None  # weights, while `stage` is under way
    optimizer: Optional[dict] = None
    early: Optional[dict] = None  # stages.EarlyStopping as a dict
    # stages.RunTotals as a dict: the run's tokens and training MACs up to here, over every
    # attempt; None in a progress.pt written before them
    totals: Optional[dict] = None

    @property
    def mid_stage(self) -> bool:
        return not self.stage_done and self.epoch > 0

    def where(self) -> dict:
        return {"stage": self.stage, "epoch": self.epoch, "stage_done": self.stage_done}


def read_resume_point(run_dir: str | os.PathLike) -> tuple[Settings, Optional[ResumePoint]]:
    """The settings of a run that can be resumed and its resume point (None: killed before
    its first epoch ended, it starts over in place)."""
    path = Path(run_dir)
    if not path.is_dir():
        raise ResumeError(f"run directory {str(path)!r} does not exist")
    settings = settings_from_dict(_read_json(path / SETTINGS_FILE, required=True))
    if _read_json(path / SUMMARY_FILE).get("status") == "finished":
        raise ResumeError(f"run {str(path)!r} has already finished; nothing to resume")
    progress = path / PROGRESS_FILE
    if not progress.exists():
        return settings, None
    raw = load_checkpoint(progress)  # runs from before ResumePoint also hold "summary"
    try:
        return settings, ResumePoint(**{f.name: raw[f.name] for f in fields(ResumePoint)
                                        if f.name in raw or f.default is MISSING})
    except KeyError as e:
        raise CheckpointError(f"checkpoint {str(progress)!r} is not a readable ashem "
                              f"checkpoint (it has no {e.args[0]!r}); start a new run") from None


def _read_json(path: Path, required: bool = False) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        if required:
            raise ResumeError(f"{str(path.parent)!r} is not an ashem run directory (no "
                              f"{path.name})") from None
    except ValueError as e:
        if required:
            raise ResumeError(f"{str(path)!r} is not valid JSON: {e}") from None
    return {}
