"""Running a study: each (configuration, seed) in turn, headless and never held: a finished run
skipped, an interrupted one resumed, a missing one started, the table rewritten after each that
finishes; a cancelled or failed run stops the study (resumable the same way). Nothing is
printed: progress goes to `notify` as StudyStep notes, each run's events to the caller's sinks."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterable, Optional

from . import events as ev
from .control import RunControl
from .rundir import SUMMARY_FILE
from .share import Donor, find_donor
from .sinks import Sink
from .settings import Settings
from .study import StudyError, StudyPlan, StudyRun, running, study_runs
from .study_table import write_tables


@dataclass
class StudyStep:
    """A note of a study's progress: a run starts, resumes, is skipped or ended; the table."""
    action: str  # "skip", "start", "resume", "finished", "cancelled", "failed", "table"
    index: int  # 1-based position of the run in the study (0 for "table")
    total: int
    config: str = ""
    seed: Optional[int] = None
    run_dir: Optional[str] = None
    detail: str = ""


@dataclass
class StudyResult:
    status: str  # "finished", "cancelled" or "failed"
    table: dict = field(default_factory=dict)
    error: Optional[ev.RunFailed] = None  # the run that failed


Notify = Callable[[StudyStep], None]


def run_study(plan: StudyPlan, sinks: Iterable[Sink] = (),
              new_control: Callable[[], RunControl] = RunControl,
              notify: Notify = lambda step: None, share: bool = True) -> StudyResult:
    """Runs what is left of a placed study, held against a second process (StudyError).
    `new_control` makes each run's control; one already cancelled stops the study there.
    `share`: a run started after an earlier configuration's at the same seed, with the same
    stage-1 settings, takes that run's stage 1 (share.py) instead of training it again."""
    with running(plan.directory):
        return _run_left(plan, sinks, new_control, notify, share)


def _run_left(plan: StudyPlan, sinks: Iterable[Sink], new_control: Callable[[], RunControl],
              notify: Notify, share: bool = True) -> StudyResult:
    runs, sinks = study_runs(plan), list(sinks)
    table: dict = {}
    for index, run in enumerate(runs, start=1):
        step = StudyStep("skip", index, len(runs), run.config.name, run.seed,
                         str(run.run_dir) if run.run_dir else None)
        if run.finished:
            notify(step)
            continue
        control = new_control()
        if control.cancelled:
            return StudyResult("cancelled", table)
        step.action = "resume" if run.run_dir is not None else "start"
        donor = find_donor(plan, run) if share and run.run_dir is None else None
        if donor is not None:
            step.detail = f"stage 1 shared from {donor.label}"
        notify(step)
        result = _run_one(run, sinks, control, donor, plan)
        notify(replace(step, action=result.status,
                       run_dir=str(result.run_dir) if result.run_dir else step.run_dir,
                       detail=result.error.message if result.error else ""))
        if result.status != "finished":
            return StudyResult(result.status, table, result.error)
        table = write_tables(plan)
        notify(StudyStep("table", 0, len(runs), run_dir=str(plan.directory),
                         detail=f"{table['finished_runs']} of {table['runs']} runs finished"))
    return StudyResult("finished", table or write_tables(plan))


def _run_one(run: StudyRun, sinks: list, control: RunControl, donor: Optional[Donor],
             plan: StudyPlan):
    from .run import RunResult, resume_ashem, run_ashem  # torch loads here, when a run is due

    if run.run_dir is not None:
        return resume_ashem(run.run_dir, sinks, control)
    try:
        settings = with_matched_budget(run, plan)
    except StudyError as e:
        failure = ev.RunFailed(error_kind="settings", message=str(e), where="start")
        for sink in sinks:
            sink(failure)
        return RunResult("failed", None, error=failure)
    return run_ashem(settings, sinks, control,
                     stage_one_from=donor.run_dir if donor is not None else None)


def with_matched_budget(run: StudyRun, plan: StudyPlan) -> Settings:
    """The run's settings, its training-MACs budget (run.training_macs_budget_from) set to the
    training MACs of the named configuration's run at the same seed, which ran before it."""
    settings, source = run.settings(), run.config.settings.run.training_macs_budget_from
    if not source:
        return settings
    (given,) = [r for r in study_runs(plan) if r.config.name == source and r.seed == run.seed]
    summary = read_summary(given.run_dir) if given.finished else {}
    macs = (summary.get("training_macs") or {}).get("total")
    if not macs:
        raise StudyError(f"{run.config.name} at seed {run.seed}: run.training_macs_budget_from = "
                         f"{source!r}, but that configuration's run at this seed has "
                         + ("no training MACs in its summary" if given.finished
                            else "not finished"))
    return settings.replace(run=dataclasses.replace(settings.run,
                                                    training_macs_budget=float(macs)))


def read_summary(run_dir: Path) -> dict:
    try:
        return json.loads((Path(run_dir) / SUMMARY_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
