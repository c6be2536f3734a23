"""A study as it is now, read from its directory while it runs (nothing is written).

`study_progress(directory)` reads it once; a `StudyFollower` reads it again and again cheaply:
it keeps each run's events.jsonl offset (events.read_new_events) and rebuilds the table only
when another run has finished. Every figure `ashem --study` shows is computed here:

- each (configuration, seed): "finished", "running" (its stage and epoch from its events),
  "starting" (the study's next run, before its run directory has its events), "waiting",
  "failed", "cancelled", or "interrupted" (a run left unfinished with no process running it);
- a run's clock: the seconds it has run over every attempt. Ended runs: summary.json's
  "seconds". The running run: its attempt's `seconds_before` + `t` of its last event, moved
  on to now by the wall clock since that event was written (the events file's modification
  time), so that the clock ticks between events; with no live study process, its last event's;
- the elapsed time: the sum of the runs' clocks. The time the study process spent between
  runs, and a pause between `ashem-engine study` sessions, are not counted;
- the estimate of the time left: with m the mean clock of the finished runs, the sum over the
  runs not finished of m less the run's clock (never below 0): waiting runs count m each, the
  running one m less its clock. None before a run has finished;
- the table: study_table.study_table of the runs finished so far (what table.json holds once
  the study has rewritten it)."""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Optional

from . import events as ev
from .rundir import EVENTS_FILE, SUMMARY_FILE
from .sinks import dispatch
from .study import (LOCK_FILE, STUDY_FILE, StudyPlan, latest_run_dir, process_alive,
                    reopen_study, seed_dir)
from .stats import is_number
from .study_table import study_table

ENDED = ("finished", "failed", "cancelled")


@dataclass(frozen=True)
class RunProgress:
    """One (configuration, seed) of a study."""
    config: str
    seed: int
    index: int  # 0-based: its seed is its configuration's run.seed + index
    state: str  # "finished", "running", "starting", "waiting", "failed", "cancelled",
    #             "interrupted"
    run_dir: Optional[Path] = None
    seconds: Optional[float] = None  # the run's clock (module docstring); None: not started
    stage: Optional[int] = None  # the stage it trains (running, interrupted)
    stages: Optional[int] = None
    epoch: Optional[int] = None  # the epoch in progress, or the last one ended
    max_epochs: Optional[int] = None
    phase: str = ""  # "training", "between stages" (mining), "evaluating", or "" (not known)
    ppl: Optional[float] = None  # finished: the final report's PPL
    error: str = ""  # failed: the run's error message


@dataclass(frozen=True)
class StudyProgress:
    directory: Path
    name: str
    configurations: tuple[str, ...]
    seeds: int  # per configuration
    runs: tuple[RunProgress, ...]  # seed by seed, as the study runs them
    alive: bool  # a live process holds study.lock
    state: str  # "running", "finished", "stopped" (runs left, no process), "failed"
    finished: int
    total: int
    finished_by_config: dict[str, int]
    elapsed_s: float
    left_s: Optional[float]
    table: dict = field(default_factory=dict)  # study_table's; {} before a run has finished

    def cell(self, config: str, index: int) -> RunProgress:
        for run in self.runs:
            if run.config == config and run.index == index:
                return run
        raise KeyError((config, index))

    @property
    def running(self) -> Optional[RunProgress]:
        return next((r for r in self.runs if r.state == "running"), None)

    @property
    def failed(self) -> tuple[RunProgress, ...]:
        return tuple(r for r in self.runs if r.state == "failed")


@dataclass
class _Followed:
    """What one run's events have said so far, and where its events.jsonl was read to."""
    offset: int = 0
    last_t: float = 0.0
    seconds_before: float = 0.0
    stages: Optional[int] = None
    stage: Optional[int] = None
    epoch: Optional[int] = None
    max_epochs: Optional[int] = None
    phase: str = ""

    def take(self, event: ev.Event) -> None:
        self.last_t = event.t
        dispatch(self, event)

    def on_RunStarted(self, event: ev.RunStarted) -> None:
        self.seconds_before = event.seconds_before
        self.stages = len(event.stages) or None

    def on_StageStarted(self, event: ev.StageStarted) -> None:
        self.stage, self.epoch, self.max_epochs = event.stage, None, event.max_epochs
        self.phase = "training"

    def on_BatchProgress(self, event: ev.BatchProgress | ev.EpochEnded) -> None:
        self.stage, self.epoch, self.phase = event.stage, event.epoch, "training"

    on_EpochEnded = on_BatchProgress

    def on_StageEnded(self, event: ev.StageEnded) -> None:
        last = self.stages is not None and event.stage >= self.stages
        self.phase = "evaluating" if last else "between stages"


class StudyFollower:
    """Reads a study directory again and again; `read()` is the study now."""

    def __init__(self, directory: str | os.PathLike,
                 clock: Callable[[], float] = time.time) -> None:
        self.directory = Path(directory)
        self.clock = clock
        self._plan: Optional[StudyPlan] = None
        self._plan_stamp: Optional[int] = None
        self._followed: dict[Path, _Followed] = {}
        self._ended: dict[Path, dict] = {}  # finished runs' summaries (they do not change)
        self._table: dict = {}
        self._table_key: Optional[tuple] = None

    def plan(self) -> StudyPlan:
        """study.json, read again when it changes (ashem-engine study --add). StudyError."""
        try:
            stamp = (self.directory / STUDY_FILE).stat().st_mtime_ns
        except OSError:
            stamp = None
        if self._plan is None or stamp != self._plan_stamp:
            self._plan, self._plan_stamp = reopen_study(self.directory), stamp
        return self._plan

    def read(self) -> StudyProgress:
        plan, now = self.plan(), self.clock()
        alive = study_alive(self.directory)
        runs = [self._run(plan, config.name, index, alive, now)
                for index in range(plan.seeds) for config in plan.configurations]
        runs = _mark_starting(runs, alive)
        finished = [r for r in runs if r.state == "finished"]
        return StudyProgress(
            directory=self.directory, name=self.directory.resolve().name,
            configurations=tuple(c.name for c in plan.configurations), seeds=plan.seeds,
            runs=tuple(runs), alive=alive, state=_study_state(runs, alive),
            finished=len(finished), total=len(runs),
            finished_by_config={c.name: sum(r.config == c.name for r in finished)
                                for c in plan.configurations},
            elapsed_s=math.fsum(r.seconds for r in runs if r.seconds is not None),
            left_s=time_left(runs), table=self._table_of(plan, finished))

    def _run(self, plan: StudyPlan, config: str, index: int, alive: bool,
             now: float) -> RunProgress:
        seed = next(c for c in plan.configurations if c.name == config) \
            .seeds(plan.seeds)[index]
        run_dir = latest_run_dir(seed_dir(plan.directory, config, seed))
        here = RunProgress(config, seed, index, "waiting", run_dir)
        if run_dir is None:
            return here
        summary = self._summary(run_dir)
        status = summary.get("status", "running")
        if status in ENDED:
            final = summary.get("final") or {}
            seconds = summary.get("seconds")
            return replace(here, state=status, seconds=seconds if _finite(seconds) else None,
                            ppl=final.get("ppl") if _finite(final.get("ppl")) else None,
                            error=str((summary.get("error") or {}).get("message", "")))
        followed = self._follow(run_dir)
        clock = followed.seconds_before + followed.last_t
        if alive:
            clock = max(clock, followed.seconds_before + now - _written_at(run_dir, followed))
        return replace(here, state="running" if alive else "interrupted", seconds=clock,
                        stage=followed.stage, stages=followed.stages, epoch=followed.epoch,
                        max_epochs=followed.max_epochs, phase=followed.phase)

    def _summary(self, run_dir: Path) -> dict:
        if run_dir in self._ended:
            return self._ended[run_dir]
        try:
            summary = json.loads((run_dir / SUMMARY_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}  # not written yet (or mid-write): the run is under way
        if not isinstance(summary, dict):
            return {}
        if summary.get("status") == "finished":
            self._ended[run_dir] = summary
        return summary

    def _follow(self, run_dir: Path) -> _Followed:
        followed = self._followed.setdefault(run_dir, _Followed())
        try:
            events, followed.offset, _ = ev.read_new_events(run_dir / EVENTS_FILE,
                                                            followed.offset)
        except OSError:
            return followed  # no events yet
        for event in events:
            followed.take(event)
        return followed

    def _table_of(self, plan: StudyPlan, finished: list[RunProgress]) -> dict:
        key = (len(plan.configurations), tuple(r.run_dir for r in finished))
        if key != self._table_key:
            self._table = study_table(plan) if finished else {}
            self._table_key = key
        return self._table


def study_progress(directory: str | os.PathLike,
                   clock: Callable[[], float] = time.time) -> StudyProgress:
    """The study in `directory` as it is now. Raises study.StudyError (one line) when the
    directory is not a readable study."""
    return StudyFollower(directory, clock).read()


def study_alive(directory: Path) -> bool:
    """Whether a live process holds the study's lock (study.running)."""
    try:
        pid = int((Path(directory) / LOCK_FILE).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return False
    return process_alive(pid)


def time_left(runs: list[RunProgress]) -> Optional[float]:
    """The module docstring's estimate; None before a run has finished."""
    done = [r.seconds for r in runs if r.state == "finished" and r.seconds is not None]
    if not done:
        return None
    mean = math.fsum(done) / len(done)
    return math.fsum(max(0.0, mean - (r.seconds or 0.0))
                     for r in runs if r.state != "finished")


def _written_at(run_dir: Path, followed: _Followed) -> float:
    """The wall-clock time its attempt began: when its last event was written, less its t."""
    try:
        return (run_dir / EVENTS_FILE).stat().st_mtime - followed.last_t
    except OSError:
        return math.inf  # no events yet: the clock stays where the events put it


def _mark_starting(runs: list[RunProgress], alive: bool) -> list[RunProgress]:
    """A live study with no run under way is starting its next one (loading, or making its
    run directory)."""
    if not alive or any(r.state == "running" for r in runs):
        return runs
    for k, run in enumerate(runs):
        if run.state == "waiting":
            return [*runs[:k], replace(run, state="starting"), *runs[k + 1:]]
    return runs


def _study_state(runs: list[RunProgress], alive: bool) -> str:
    if all(r.state == "finished" for r in runs):
        return "finished"
    if alive:
        return "running"
    return "failed" if any(r.state == "failed" for r in runs) else "stopped"




def _finite(x) -> bool:
    return is_number(x) and math.isfinite(x)
