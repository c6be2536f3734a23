"""The run plan, the one place that names steps and hold points (run.pause_at,
Paused.boundary): a run's steps, and what a resumed attempt does again. RunStarted carries it."""
from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any, Optional, Sequence

STAGE, MINING, EVALUATION, SWEEP = "stage", "mining", "evaluation", "sweep"  # the step kinds


@dataclass(frozen=True)
class Step:
    id: str  # unique in the plan; a timeline step's id names the hold point it shows
    kind: str  # what the Pipeline runs for it
    stage: Optional[int]  # the stage its events name (mining: the stage at whose exit it mines)
    label: str  # its heading in a timeline ("Stage 1", "Mining"); none: shown within the one before
    name: str = ""  # "train stage 1", "mine and grow 2", ..., "evaluate", "sweep"
    boundary: Optional[str] = None  # the hold point after it (run.pause_at, Paused.boundary)
    where: str = ""  # where a hold there is, as Paused.where says it
    steerable: bool = False  # the hard ratio can be set while the run holds after it


def build(stages: int, sweep: bool) -> tuple[Step, ...]:
    """Train stage 1; for every later stage N mine and grow N, train stage N; evaluate; the
    sweep. The run holds at "evaluation" once the last of them is done."""
    return _ending(_grown(stages), sweep)


def build_joint(stages: int, sweep: bool) -> tuple[Step, ...]:
    """The joint early-exit baseline (joint.enabled): train one model with an exit per stage,
    calibrate every exit but the last; evaluate; the sweep. Held at "evaluation" as build's."""
    return _ending(_joint(stages), sweep)


def _ending(steps: list, sweep: bool) -> tuple[Step, ...]:
    steps.append(Step(EVALUATION, EVALUATION, None, "Evaluation", "evaluate"))
    if sweep:
        steps.append(Step(SWEEP, SWEEP, None, "", "sweep"))
    steps[-1] = replace(steps[-1], boundary=EVALUATION, where="after the final evaluation")
    return tuple(steps)


def _grown(stages: int) -> list[Step]:
    steps = []
    for n in range(1, stages + 1):
        if n > 1:
            steps.append(Step(f"mining-{n - 1}", MINING, n - 1, "Mining", f"mine and grow {n}",
                              f"mining-{n - 1}", f"after mining at stage {n - 1}'s exit", True))
        steps.append(Step(f"stage-{n}", STAGE, n, f"Stage {n}", f"train stage {n}", f"stage-{n}",
                          f"after stage {n}"))
    return steps


def _joint(stages: int) -> list[Step]:
    """One training step (stage 1's, every exit at once); then exit N's threshold, set at stage
    N's exit as mining sets it (the hold point keeps mining's name), for each exit but the last."""
    steps = [Step("stage-1", STAGE, 1, "Joint training", "train jointly", "stage-1",
                  "after joint training")]
    steps += [Step(f"mining-{n}", MINING, n, "Calibration", f"calibrate exit {n}", f"mining-{n}",
                   f"after calibrating exit {n}") for n in range(1, stages)]
    return steps


def of_settings(settings: Any) -> tuple[Step, ...]:
    builder = build_joint if settings.joint.enabled else build
    return builder(len(settings.stages), bool(settings.evaluation.sweep_points))


def of_run(started: Any) -> tuple[Step, ...]:
    """The plan a RunStarted carries (logged before there was one: built from its settings)."""
    known = {f.name for f in fields(Step)}  # fields a later version adds are left out
    if started.plan:
        return tuple(Step(**{k: v for k, v in s.items() if k in known}) for s in started.plan)
    settings = started.settings or {}
    sweep = (settings.get("evaluation") or {}).get("sweep_points", 0)
    builder = build_joint if (settings.get("joint") or {}).get("enabled") else build
    return builder(max(1, len(settings.get("stages") or ())), bool(sweep))


def resumes_at(steps: Sequence[Step], stage: int, stage_done: bool) -> int:
    """The first step a run resumed at this point runs: stage N's training again (from the
    point's epoch), or the step after it once it was done. Stage 0: nothing was done."""
    at = next((i for i, s in enumerate(steps) if s.kind == STAGE and s.stage == stage), -1)
    return max(0, at + 1 if stage_done else at)


@dataclass(frozen=True)
class Rewind:
    """What a resumed attempt keeps of what the attempts before reported (it redoes the rest):
    the steps before its resume point; of the stage it resumes in, the start and epochs to it."""
    kept: frozenset  # (kind, stage) of the steps before the resume point
    stage: int
    epoch: int

    def keeps(self, kind: str, stage: int) -> bool:
        return (kind, stage) in self.kept

    def keeps_start(self, stage: int) -> bool:
        return stage <= self.stage

    def keeps_epoch(self, stage: int, epoch: int) -> bool:
        return stage < self.stage or (stage == self.stage and epoch <= self.epoch)


def rewind(steps: Sequence[Step], point: dict) -> Rewind:
    """`point`: a RunStarted's resume_point ({"stage", "epoch", "stage_done"})."""
    at = resumes_at(steps, point["stage"], point["stage_done"])
    return Rewind(frozenset((s.kind, s.stage) for s in steps[:at]), point["stage"],
                  point["epoch"])
