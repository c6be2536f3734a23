"""Running a study: each (configuration, seed) in turn, headless and never held: a finished run
skipped, an interrupted one resumed, a missing one started, the table rewritten after each that
finishes; a cancelled or failed run stops the study (resumable the same way). Nothing is
printed: progress goes to `notify` as StudyStep notes, each run's events to the caller's sinks."""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable, Iterable, Optional

from . import events as ev
from .control import RunControl
from .sinks import Sink
from .study import StudyPlan, StudyRun, running, study_runs
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
              notify: Notify = lambda step: None) -> StudyResult:
    """Runs what is left of a placed study, held against a second process (StudyError).
    `new_control` makes each run's control; one already cancelled stops the study there."""
    with running(plan.directory):
        return _run_left(plan, sinks, new_control, notify)


def _run_left(plan: StudyPlan, sinks: Iterable[Sink], new_control: Callable[[], RunControl],
              notify: Notify) -> StudyResult:
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
        notify(step)
        result = _run_one(run, sinks, control)
        notify(replace(step, action=result.status,
                       run_dir=str(result.run_dir) if result.run_dir else step.run_dir,
                       detail=result.error.message if result.error else ""))
        if result.status != "finished":
            return StudyResult(result.status, table, result.error)
        table = write_tables(plan)
        notify(StudyStep("table", 0, len(runs), run_dir=str(plan.directory),
                         detail=f"{table['finished_runs']} of {table['runs']} runs finished"))
    return StudyResult("finished", table or write_tables(plan))


def _run_one(run: StudyRun, sinks: list, control: RunControl):
    from .run import resume_ashem, run_ashem  # torch loads here, when a run is due

    if run.run_dir is not None:
        return resume_ashem(run.run_dir, sinks, control)
    return run_ashem(run.settings(), sinks, control)
