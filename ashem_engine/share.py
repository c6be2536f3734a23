"""Stage 1 shared within a study: configurations whose stage-1 settings are equal train stage 1
once per seed, and the others take it (Pipeline._share_stage_one) with the same figures, bit
for bit. Here: the key of what stage 1 depends on, the donor a study run takes it from, and
what a run reads of its donor: the stage-1 events of its events.jsonl, its stage-1-best.pt
and its stage-1-end.pt (the resume point where its stage 1 ended: random state and totals)."""
from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from . import events as ev
from .rundir import (BEST_WEIGHTS_FILE, EVENTS_FILE, SETTINGS_FILE, STAGE_ONE_END_FILE,
                     CheckpointError, atomic_write, load_checkpoint)
from .settings import Settings, SettingsError, settings_from_dict
from .study import StudyPlan, StudyRun, study_runs

# What stage 1 reads of [run]. The rest of it (name, runs_dir, pause_at, loggers,
# machine_sample_s, ...) names, places or watches a run without changing its numbers.
RUN_KEYS = ("seed", "precision", "device", "threads", "compile", "progress_events_per_epoch",
            "training_macs_budget", "training_macs_budget_from")
# The events stage 1's training emits, replayed by a run that takes it.
STAGE_EVENTS = (ev.StageStarted, ev.BatchProgress, ev.EpochEnded, ev.StageEnded)


class NotShared(Exception):
    """Why a run cannot take stage 1 from another (it trains its own). One line."""


def stage_one_key(settings: Settings) -> str:
    """A digest of every setting that can change stage 1's events and weights: runs with
    equal keys train the same stage 1."""
    return key_of(settings.to_dict())


def key_of(settings: dict) -> str:
    """stage_one_key of a settings dict (Settings.to_dict)."""
    joint = settings.get("joint")
    what = {"data": settings["data"], "model": settings["model"],
            "optimizer": settings["optimizer"], "stage_1": settings["stages"][0],
            "run": {k: settings["run"].get(k) for k in RUN_KEYS}, "joint": joint}
    tiles = settings["run"].get("head_tiles", "auto")
    if tiles != "auto":  # (left out at its default, so that keys made before it still match)
        what["run"]["head_tiles"] = tiles
    if joint and joint.get("enabled"):  # a joint run trains every stage's exit from the start:
        # every stage, and how exits are calibrated and run, kept whole (none left to chance)
        what.update(stages=settings["stages"], mining=settings["mining"],
                    evaluation=settings["evaluation"])
    text = json.dumps(what, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


# -- the donor of a study run ----------------------------------------------------------------

@dataclass(frozen=True)
class Donor:
    config: str
    seed: int
    run_dir: Path

    @property
    def label(self) -> str:
        return f"{self.config}@{self.seed}"


def find_donor(plan: StudyPlan, run: StudyRun) -> Optional[Donor]:
    """The run of an earlier configuration in the study, at the same seed and with the same
    stage-1 settings, whose stage 1 has ended (a readable stage-1-end.pt); None if none has."""
    earlier = [c.name for c in plan.configurations]
    earlier = earlier[:earlier.index(run.config.name)]
    key = stage_one_key(run.settings())
    for other in study_runs(plan):  # read again: runs started since have their directories
        if other.config.name not in earlier or other.seed != run.seed or other.run_dir is None:
            continue
        if stage_one_key(other.settings()) != key:
            continue
        try:
            end_point(other.run_dir)
        except NotShared:
            continue
        return Donor(other.config.name, other.seed, other.run_dir)
    return None


# -- what a run takes of its donor -----------------------------------------------------------

@dataclass
class StageOne:
    """A donor's stage 1, as the run taking it needs it."""
    events: list  # StageStarted(1) ... StageEnded(1), as an uninterrupted run emits them
    end: dict  # its resume point where stage 1 ended (vars(ResumePoint))
    weights: dict  # its stage-1-best.pt's model weights


def read_stage_one(donor: Path, key: str) -> StageOne:
    """The stage 1 of the run in `donor`, whose stage-1 key must be `key`. NotShared if its
    files are missing or unreadable, or its stage-1 settings differ."""
    try:
        raw = json.loads((donor / SETTINGS_FILE).read_text(encoding="utf-8"))
        theirs = key_of(settings_from_dict(raw).to_dict())
    except (OSError, ValueError, SettingsError) as e:
        raise NotShared(f"its {SETTINGS_FILE} cannot be read ({type(e).__name__})") from None
    if theirs != key:
        raise NotShared("its stage-1 settings differ")
    end = end_point(donor)
    try:
        weights = load_checkpoint(donor / BEST_WEIGHTS_FILE.format(1))["model"]
    except CheckpointError as e:
        raise NotShared(str(e)) from None
    events = stage_one_events(donor / EVENTS_FILE)
    epochs = [e.epoch for e in events if isinstance(e, ev.EpochEnded)]
    if epochs != list(range(1, end["epoch"] + 1)) or events[-1].epochs != end["epoch"]:
        raise NotShared(f"its {EVENTS_FILE} does not hold the {end['epoch']} epochs of its "
                        f"{STAGE_ONE_END_FILE}")
    return StageOne(events, end, weights)


def end_point(run_dir: Path) -> dict:
    """A run's stage-1-end.pt; NotShared if it is missing or unreadable."""
    path = run_dir / STAGE_ONE_END_FILE
    try:
        end = load_checkpoint(path, required="rng")
    except CheckpointError as e:
        raise NotShared(str(e)) from None
    if end.get("stage") != 1 or not end.get("stage_done") or \
            not isinstance(end.get("epoch"), int):
        raise NotShared(f"{str(path)!r} is not where a stage 1 ended")
    return end


def stage_one_events(path: Path) -> list:
    """A log's stage-1 training events as one uninterrupted attempt emits them: a resumed
    attempt keeps what came before its resume point, as the summary does. NotShared if the
    log cannot be read or holds no ended stage 1."""
    try:
        logged = ev.read_events(path)
    except OSError as e:
        raise NotShared(f"its {EVENTS_FILE} cannot be read: {e.strerror or e}") from None
    kept: list = []
    for event in logged:
        if isinstance(event, ev.RunStarted):
            kept = _rewound(kept, event)
        elif isinstance(event, STAGE_EVENTS) and event.stage == 1:
            if not (isinstance(event, ev.StageStarted) and kept):  # a resumed attempt's again
                kept.append(event)
    if not kept or not isinstance(kept[0], ev.StageStarted) or \
            not isinstance(kept[-1], ev.StageEnded):
        raise NotShared(f"its {EVENTS_FILE} holds no ended stage 1")
    return kept


def _rewound(kept: list, started: ev.RunStarted) -> list:
    """What an attempt that starts (or resumes) with `started` keeps of stage 1's events."""
    point = started.resume_point if started.resumed else None
    if point is None:
        return []  # a new start (or a log from before resume points: not taken)
    if point["stage"] > 1 or point["stage_done"]:
        return kept
    return [e for e in kept if isinstance(e, ev.StageStarted) or (
        isinstance(e, (ev.BatchProgress, ev.EpochEnded)) and e.epoch <= point["epoch"])]


def weights_fit(own: dict, weights: dict) -> bool:
    """Whether `weights` has a model's keys with their shapes (load_state_dict would refuse
    them only after copying some in)."""
    return own.keys() == weights.keys() and all(own[k].shape == weights[k].shape for k in own)


def copy_file(source: Path, target: Path) -> None:
    """`source` copied to `target` atomically (rundir.atomic_write)."""
    with open(source, "rb") as f:
        atomic_write(target, lambda out: shutil.copyfileobj(f, out))
