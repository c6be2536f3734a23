"""Where a cancelled or killed run goes on: progress.pt, read back as a typed ResumePoint.

The file is rewritten after every finished epoch, after mining and after every stage. Its keys
are those of run directories written before this type existed, so old runs keep resuming.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Optional

import torch

from .rundir import CheckpointError, atomic_torch_save, load_checkpoint
from .settings import Settings, settings_from_dict

PROGRESS = "progress.pt"


class ResumeError(Exception):
    """A run directory that cannot be resumed. str(error) is one line for a person."""


@dataclass
class ResumePoint:
    stage: int  # 1-based
    epoch: int  # epochs of `stage` finished (0: its hard tokens are mined, no epoch yet)
    stage_done: bool
    exit_layers: list
    thresholds: list
    rng: torch.Tensor  # torch's generator state at this point
    seconds_before: float  # run time up to this point, over every attempt so far
    model: Optional[dict] = None  # the weights while `stage` is under way
    optimizer: Optional[dict] = None
    early: Optional[dict] = None  # stages.EarlyStopping as a dict
    # The summary's stages and mining as JSON. No longer read (the summary is rebuilt from
    # events.jsonl) but still written, so the file keeps its layout.
    summary: str = "{}"

    @classmethod
    def from_dict(cls, raw: dict, path: Path) -> "ResumePoint":
        missing = [f.name for f in fields(cls) if f.name not in raw and f.name != "summary"]
        if missing:
            raise CheckpointError(f"{str(path)!r} is not an ashem progress file "
                                  f"(no {missing[0]!r} entry)")
        return cls(**{f.name: raw[f.name] for f in fields(cls) if f.name in raw})

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @property
    def mid_stage(self) -> bool:
        """True after an epoch of a stage that is not done: training goes on from there."""
        return not self.stage_done and self.epoch > 0

    def where(self) -> dict:
        """For RunStarted.resume_point."""
        return {"stage": self.stage, "epoch": self.epoch, "stage_done": self.stage_done}

    def training_state(self, best_state: Optional[dict]) -> dict:
        """What stages.run_stage takes to go on after epoch `epoch`."""
        return {"epoch": self.epoch, "model": self.model, "optimizer": self.optimizer,
                "early": self.early, "best_state": best_state}


def save_resume_point(run_dir: Path, point: ResumePoint) -> None:
    atomic_torch_save(run_dir / PROGRESS, point.to_dict())


def read_resume_point(run_dir: str | os.PathLike) -> tuple[Settings, Optional[ResumePoint]]:
    """The settings of a run that can be resumed and where it goes on (None: it was killed
    before its first epoch ended, so it starts over in place)."""
    path = Path(run_dir)
    settings = settings_from_dict(_run_settings(path))
    try:
        summary = json.loads((path / "summary.json").read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):
        summary = {}
    if summary.get("status") == "finished":
        raise ResumeError(f"run {str(path)!r} has already finished; nothing to resume")
    if not (path / PROGRESS).exists():
        return settings, None
    return settings, ResumePoint.from_dict(load_checkpoint(path / PROGRESS), path / PROGRESS)


def _run_settings(path: Path) -> dict:
    if not path.is_dir():
        raise ResumeError(f"run directory {str(path)!r} does not exist")
    try:
        return json.loads((path / "settings.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ResumeError(f"{str(path)!r} is not an ashem run directory (no settings.json)"
                          ) from None
    except ValueError as e:
        raise ResumeError(f"{str(path / 'settings.json')!r} is not valid JSON: {e}") from None
