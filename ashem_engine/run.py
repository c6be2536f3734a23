"""The orchestrator: settings + sinks + control -> a run directory and a result. A run is a
loop over named steps (steps.py), from a resumed run's resume point (resume.py) on; nothing is
printed, and a cancel or a failure ends as a result, not an exception."""
from __future__ import annotations

import os
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional

from . import events as ev
from .command_file import RunCommands
from .control import Cancelled, RunControl
from .data import Corpus, DataError
from .dist import PeerLost, SharedControl, World, join, lost_peer, peer_detail
from .machine import MachineSampler
from .resume import ResumeError, ResumePoint, read_resume_point
from .rundir import (SETTINGS_FILE, CheckpointError, RunDirError,
                     atomic_write_json, create_run_dir, probe_writable)
from .settings import Settings, SettingsError
from .sinks import Emitter, Sink, build_sinks, close_sinks
from .stages import CompileFailed, NumericFault
from .steps import Pipeline, choose_threads  # noqa: F401  (bench imports it from here)
from .summary import SummaryReducer, base_summary, reducer_from_log


@dataclass
class RunResult:
    status: str  # "finished", "cancelled" or "failed"
    run_dir: Optional[Path]
    summary: dict = field(default_factory=dict)
    error: Optional[ev.RunFailed] = None


def run_ashem(settings: Settings, sinks: Iterable[Sink] = (),
              control: Optional[RunControl] = None, corpus: Optional[Corpus] = None,
              stage_one_from: Optional[str | os.PathLike] = None) -> RunResult:
    """Runs every stage in a new run directory; never raises for cancel or failure
    (see RunResult.status). Under torchrun, rank 0 makes the directory and tells the others.
    `stage_one_from`: a run directory with the same stage-1 settings whose stage 1 this run
    takes instead of training it (share.py; where it cannot, stage 1 is trained)."""
    try:
        world = join(settings.run.device, settings.run.peer_timeout_s)
    except Exception as e:  # torch.distributed raises many types
        return _failed_before_start(sinks, "distributed", "cannot join torchrun's process "
                                    f"group: {peer_detail(e)}")
    unresolved = settings.run.training_macs_budget_from and not settings.run.training_macs_budget
    if unresolved:
        return _failed_before_start(sinks, "settings", "run.training_macs_budget_from = "
                                    f"{settings.run.training_macs_budget_from!r} is for studies (the "
                                    "named configuration's run sets the budget); outside a study "
                                    "give run.training_macs_budget too")
    made = None
    if world.lead:
        try:
            made = create_run_dir(settings.run.runs_dir, settings.run.name)
            atomic_write_json(made / SETTINGS_FILE, settings.to_dict())
        except RunDirError as e:
            made = e
    made = world.from_lead(made)
    if isinstance(made, RunDirError):
        return _failed_before_start(sinks if world.lead else (), "run_dir", str(made))
    return _drive(settings, made, sinks, control, corpus, point=None,
                  stage_one_from=Path(stage_one_from) if stage_one_from is not None else None)


def resume_ashem(run_dir: str | os.PathLike, sinks: Iterable[Sink] = (),
                 control: Optional[RunControl] = None, corpus: Optional[Corpus] = None
                 ) -> RunResult:
    """Continues a cancelled or killed run from its last finished epoch (or stage), in its run
    directory, with its settings. Under torchrun rank 0 reads the directory and sends it."""
    try:
        world = join("auto")  # NCCL where CUDA is, and gloo for the CPU's tensors
    except Exception as e:  # torch.distributed raises many types
        return _failed_before_start(sinks, "distributed", "cannot join torchrun's process "
                                    f"group: {peer_detail(e)}")
    try:
        settings, point = world.lead_reads(lambda: _resumable(Path(run_dir)))
    except (ResumeError, RunDirError, SettingsError, CheckpointError) as e:
        return _failed_before_start(sinks, "resume", str(e))
    return _drive(settings, Path(run_dir), sinks, control, corpus, point)


def _resumable(run_dir: Path) -> tuple:
    settings_and_point = read_resume_point(run_dir)
    probe_writable(run_dir)
    return settings_and_point


def _failed_before_start(sinks: Iterable[Sink], kind: str, message: str) -> RunResult:
    failure = ev.RunFailed(error_kind=kind, message=message, where="start")
    for sink in sinks:
        sink(failure)
    return RunResult("failed", None, error=failure)


FAILURE_KINDS = {DataError: "data", NumericFault: "numeric", RunDirError: "run_dir",
                 CheckpointError: "checkpoint", PeerLost: "distributed",
                 CompileFailed: "settings"}


def _drive(settings: Settings, run_dir: Path, sinks: Iterable[Sink],
           control: Optional[RunControl], corpus: Optional[Corpus],
           point: Optional[ResumePoint], stage_one_from: Optional[Path] = None) -> RunResult:
    control, world = control or RunControl(pause_at=None), World.current()
    control.starts(settings.run.pause_at)  # the one place a run's pause_at is read
    own_commands = world.lead and control.commands is None  # (a caller may bring a reader)
    if own_commands:  # before events.jsonl: a dashboard can attach only once that is there
        control.commands = RunCommands(run_dir)  # commands.jsonl (and a legacy control.json)
    if world.parallel:  # rank 0's control (and command log) decides for every rank
        control = SharedControl(control, world, settings.run.peer_timeout_s,
                                settings.run.control_every)
    # the attempts before, in a resumed run; rank 0's files, so only rank 0 reads them
    reducer = reducer_from_log(run_dir) if world.lead else \
        SummaryReducer(base_summary(run_dir, settings.to_dict()))
    own_sinks = build_sinks(run_dir if world.lead else None, reducer, settings=settings)
    emit, sampler = _emitter(settings, [*own_sinks, *(sinks if world.lead else ())])
    control.on_pause = lambda where, reason, boundary: emit(ev.Paused(where, reason, boundary))
    control.on_resume = lambda where: emit(ev.Resumed(where))
    control.on_command = emit
    pipeline = Pipeline(settings, run_dir, emit, control, reducer, stage_one_from)
    try:
        state = pipeline.start(corpus, point)
        with pipeline.precision():
            for step in pipeline.steps(point):
                pipeline.run(step, state)
        sampler.stop()
        finished = ev.RunFinished(run_dir=str(run_dir), seconds=round(emit.elapsed(), 3),
                                  summary={})
        finished.summary = reducer.after(finished)
        emit(finished)
        return RunResult("finished", run_dir, pipeline.write_summary())
    except Cancelled as c:
        sampler.stop()
        emit(ev.RunCancelled(run_dir=str(run_dir), where=c.where,
                             seconds=round(emit.elapsed(), 3)))
        return RunResult("cancelled", run_dir, pipeline.write_summary())
    except Exception as e:  # expected or not, a failure ends as an event, not a traceback
        kind, message, where = _described(e, pipeline.where)
        failure = ev.RunFailed(kind, message.replace("RUN_DIR", str(run_dir)), where,
                               run_dir=str(run_dir))
        sampler.stop()
        emit(failure)
        return RunResult("failed", run_dir, pipeline.write_summary(), failure)
    finally:
        sampler.stop()  # (an exception that is not an Exception)
        close_sinks(own_sinks)
        control.on_pause = control.on_resume = control.on_command = None
        if own_commands:
            control.commands = None


def _emitter(settings: Settings, sinks: list) -> tuple[Emitter, MachineSampler]:
    """The run's emitter, and the machine sampler that annotates its events (machine.py): on
    rank 0 alone, which samples its own process. The sampler stops before the run's last
    event, so that its last sample comes before that."""
    sampler = MachineSampler(settings.run.machine_sample_s, on=World.current().lead)
    emit = Emitter(*sinks, annotate=sampler.annotate)
    sampler.start(emit)
    return emit, sampler


def _described(e: Exception, where: str) -> tuple[str, str, str]:
    """A failure's kind, message and place; an unexpected one's place in the code too."""
    if World.current().parallel and lost_peer(e):
        e = PeerLost(peer_detail(e))
    if type(e) in FAILURE_KINDS:
        return FAILURE_KINDS[type(e)], str(e), getattr(e, "where", where)
    tb = traceback.extract_tb(e.__traceback__)
    origin = f"{Path(tb[-1].filename).name}:{tb[-1].lineno}" if tb else "?"
    return "internal", f"{type(e).__name__}: {e}", f"{where} ({origin})"
