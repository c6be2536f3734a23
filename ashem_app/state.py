"""The view model: a pure reducer from engine events to what the screens show.

`reduce(view, event) -> view` returns a new `RunView` and never touches a widget, so the whole
dashboard state can be unit-tested from an event list. Every figure in the view is an event
field (or picked from events, like the best epoch); nothing is computed here.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Iterable, Optional

from ashem_engine.events import (
    BatchProgress, EpochEnded, Evaluated, Event, HardExamplesCollected, MachineSampled, Paused,
    Resumed, RunCancelled, RunFailed, RunFinished, RunStarted, StageEnded, StageStarted,
    SweepComputed, ThresholdComputed,
)
from ashem_engine import plan as run_plan
from ashem_engine.plan import Step
from ashem_engine.sinks import dispatch

TERMINAL = ("finished", "failed", "cancelled")
MACHINE_SAMPLES_KEPT = 600  # the machine chart's samples: 50 min at the default 5 s


@dataclass(frozen=True)
class StagePlan:
    stage: int
    layers: int
    max_epochs: int


@dataclass(frozen=True)
class RunView:
    status: str = "waiting"  # waiting | running | paused | finished | failed | cancelled
    t: float = 0.0  # the `t` of the latest event: seconds since this attempt started
    clock_offset: float = 0.0  # RunStarted.seconds_before: what earlier attempts ran
    started: Optional[RunStarted] = None
    stage_plans: tuple[StagePlan, ...] = ()  # each stage's layers and epoch limit
    plan_steps: tuple[Step, ...] = ()  # the run's plan (RunStarted.plan, or its settings')
    stage_started: dict = field(default_factory=dict)  # stage -> StageStarted
    epochs: tuple[EpochEnded, ...] = ()  # every EpochEnded, in order, all stages
    stage_ended: dict = field(default_factory=dict)  # stage -> StageEnded
    threshold_computed: dict = field(default_factory=dict)  # stage -> ThresholdComputed
    hard_collected: dict = field(default_factory=dict)  # stage -> HardExamplesCollected
    evaluation: Optional[Evaluated] = None
    sweep: Optional[SweepComputed] = None  # the latest threshold sweep (after evaluation)
    progress: Optional[BatchProgress] = None
    pause: Optional[Paused] = None  # set while paused
    holds: tuple[Paused, ...] = ()  # every pause_at hold seen (the transitions)
    hold_clocks: tuple[float, ...] = ()  # the run clock (see `clock`) of each of `holds`
    finished: Optional[RunFinished] = None
    cancelled: Optional[RunCancelled] = None
    failed: Optional[RunFailed] = None
    # this attempt's process (a resumed run's new attempt is a new process): the latest
    # MachineSampled, and the last MACHINE_SAMPLES_KEPT of them
    machine: Optional[MachineSampled] = None
    machine_samples: tuple[MachineSampled, ...] = ()
    events_seen: int = 0  # events reduced so far

    # -- derived look-ups (no arithmetic but the run clock's offset) --------------------
    @property
    def clock(self) -> float:
        """The run clock: seconds over every attempt (a resumed engine starts `t` at 0
        again and says in RunStarted.seconds_before how long the earlier attempts ran)."""
        return self.clock_offset + self.t

    @property
    def name(self) -> str:
        return self.started.name if self.started else ""

    @property
    def run_dir(self) -> str:
        if self.started and self.started.run_dir:
            return self.started.run_dir
        for ev in (self.finished, self.cancelled, self.failed):
            if ev is not None and getattr(ev, "run_dir", ""):
                return ev.run_dir
        return ""

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    @property
    def held_at(self) -> Optional[str]:
        """The boundary the run is holding at (a pause_at pause), else None."""
        if self.status == "paused" and self.pause and self.pause.reason == "pause_at":
            return self.pause.boundary
        return None

    def stage_epochs(self, stage: int) -> tuple[EpochEnded, ...]:
        return tuple(e for e in self.epochs if e.stage == stage)

    def last_epoch(self, stage: Optional[int] = None) -> Optional[EpochEnded]:
        for e in reversed(self.epochs):
            if stage is None or e.stage == stage:
                return e
        return None

    def best_epoch(self, stage: int) -> Optional[EpochEnded]:
        """The EpochEnded of the stage's best epoch so far (as the engine reports it)."""
        last = self.last_epoch(stage)
        if last is None:
            return None
        for e in self.stage_epochs(stage):
            if e.epoch == last.best_epoch:
                return e
        return None

    def max_epochs(self, stage: int) -> Optional[int]:
        if stage in self.stage_started:
            return self.stage_started[stage].max_epochs
        for p in self.stage_plans:
            if p.stage == stage:
                return p.max_epochs
        return None

    @property
    def stages(self) -> tuple[int, ...]:
        if self.stage_plans:
            return tuple(p.stage for p in self.stage_plans)
        return tuple(sorted(self.stage_started))

    @property
    def current_stage(self) -> Optional[int]:
        return max(self.stage_started) if self.stage_started else None

    @property
    def last_mining_stage(self) -> Optional[int]:
        return max(self.threshold_computed) if self.threshold_computed else None

    def planned(self) -> tuple[Step, ...]:
        """The run's plan; before its RunStarted, the stages seen (or one) and no sweep."""
        return self.plan_steps or run_plan.build(max(self.stages, default=1), False)

    def steps(self) -> list[Step]:
        """The timeline: the plan's steps that have a label (the others show within one)."""
        return [s for s in self.planned() if s.label]

    def step(self, step_id: str) -> Optional[Step]:
        for s in self.steps():
            if s.id == step_id:
                return s
        return None

    def step_done(self, step: Step) -> bool:
        reported = _REPORTED.get(step.kind)
        return reported[1](self, step.stage) if reported else self._passed(step)

    def step_started(self, step: Step) -> bool:
        reported = _REPORTED.get(step.kind)
        return reported[0](self, step.stage) if reported else self._passed(step)

    def _passed(self, step: Step) -> bool:
        """A kind of step whose events the view does not keep: done once a later one started."""
        steps = self.planned()
        return any(self.step_started(s) for s in steps[steps.index(step) + 1:])

    @property
    def can_steer(self) -> bool:
        """Whether the run holds after a step of the plan where the hard ratio can be steered."""
        held = self.held_at
        return held is not None and any(s.boundary == held and s.steerable
                                        for s in self.planned())

    def current_step(self) -> Optional[Step]:
        """The first step not done yet (the one running, or about to start when held)."""
        if self.status == "waiting" or self.status == "finished":
            return None
        for s in self.steps():
            if not self.step_done(s):
                return s
        return None

    def step_state(self, step: Step) -> str:
        """pending | running | held | done | failed | cancelled."""
        if self.step_done(step):
            return "done"
        cur = self.current_step()
        if cur is None or cur.id != step.id:
            return "pending"
        if self.status == "failed":
            return "failed"
        if self.status == "cancelled":
            return "cancelled"
        if self.status == "paused":
            return "held"
        return "running"

    def has_detail(self, step: Step) -> bool:
        """Whether the inspection screen has anything to show for this step."""
        return self.step_started(step) or self.step_done(step)

    def hold_for(self, step_id: str) -> Optional[Paused]:
        for p in reversed(self.holds):
            if p.boundary == step_id:
                return p
        return None

    def hold_clock(self, step_id: str) -> Optional[float]:
        """The run clock when the run last held at `step_id` (over every attempt)."""
        for p, clock in zip(reversed(self.holds), reversed(self.hold_clocks)):
            if p.boundary == step_id:
                return clock
        return None


def _stage_plans(started: RunStarted) -> tuple[StagePlan, ...]:
    out = []
    for i, s in enumerate(started.stages or (), start=1):
        if isinstance(s, dict):
            out.append(StagePlan(int(s.get("stage", i)), int(s.get("layers", 0)),
                                 int(s.get("max_epochs", 0))))
    return tuple(out)


def _started(view: RunView, event: RunStarted) -> dict:
    """The changes a RunStarted makes. A resumed run (same directory, same file) carries on
    from its resume point: what an earlier attempt did after it is done again, so it is
    dropped here (as the engine's summary does) and the redone events take its place."""
    steps = run_plan.of_run(event)
    changes = dict(started=event, stage_plans=_stage_plans(event), plan_steps=steps,
                   status="running", pause=None, progress=None, cancelled=None, failed=None,
                   finished=None, clock_offset=event.seconds_before or 0.0, machine=None,
                   machine_samples=())
    point = event.resume_point if event.resumed else None
    if not point:
        return changes
    kept = run_plan.rewind(steps, point)
    stage, mining = run_plan.STAGE, run_plan.MINING
    changes.update(
        epochs=tuple(e for e in view.epochs if kept.keeps_epoch(e.stage, e.epoch)),
        stage_started={n: e for n, e in view.stage_started.items() if kept.keeps_start(n)},
        stage_ended={n: e for n, e in view.stage_ended.items() if kept.keeps(stage, n)},
        threshold_computed={n: e for n, e in view.threshold_computed.items()
                            if kept.keeps(mining, n)},
        hard_collected={n: e for n, e in view.hard_collected.items() if kept.keeps(mining, n)},
        evaluation=None, sweep=None)
    return changes


# what each kind of step has reported, from the view: (started, done); for a step's stage
_REPORTED = {
    run_plan.STAGE: (lambda v, n: n in v.stage_started, lambda v, n: n in v.stage_ended),
    run_plan.MINING: (lambda v, n: n in v.threshold_computed or n in v.hard_collected,
                      lambda v, n: n in v.hard_collected),
    run_plan.EVALUATION: (lambda v, n: v.evaluation is not None,) * 2,
    run_plan.SWEEP: (lambda v, n: v.sweep is not None,) * 2,
}


class _Changes:
    """What each kind of event changes in the view (the method `dispatch` finds for it);
    `running`: the status of a run that makes progress."""

    def on_BatchProgress(self, e: BatchProgress, view: RunView, running: str) -> dict:
        return dict(progress=e, status=running)

    def on_RunStarted(self, e: RunStarted, view: RunView, running: str) -> dict:
        return _started(view, e)

    def on_StageStarted(self, e: StageStarted, view: RunView, running: str) -> dict:
        return dict(stage_started={**view.stage_started, e.stage: e}, progress=None,
                    status=running)

    def on_EpochEnded(self, e: EpochEnded, view: RunView, running: str) -> dict:
        return dict(epochs=view.epochs + (e,), status=running)

    def on_StageEnded(self, e: StageEnded, view: RunView, running: str) -> dict:
        return dict(stage_ended={**view.stage_ended, e.stage: e}, status=running)

    def on_ThresholdComputed(self, e: ThresholdComputed, view: RunView, running: str) -> dict:
        return dict(threshold_computed={**view.threshold_computed, e.stage: e}, status=running)

    def on_HardExamplesCollected(self, e: HardExamplesCollected, view: RunView,
                                 running: str) -> dict:
        return dict(hard_collected={**view.hard_collected, e.stage: e}, status=running)

    def on_Evaluated(self, e: Evaluated, view: RunView, running: str) -> dict:
        return dict(evaluation=e, status=running)

    def on_SweepComputed(self, e: SweepComputed, view: RunView, running: str) -> dict:
        return dict(sweep=e, status=running)

    def on_Paused(self, e: Paused, view: RunView, running: str) -> dict:
        changes: dict = dict(pause=e)
        if not view.terminal:
            changes.update(status="paused")
        if e.reason == "pause_at" and e.boundary:
            changes.update(holds=view.holds + (e,),
                           hold_clocks=view.hold_clocks + (view.clock_offset + e.t,))
        return changes

    def on_Resumed(self, e: Resumed, view: RunView, running: str) -> dict:
        return dict(pause=None) if view.terminal else dict(pause=None, status="running")

    def on_MachineSampled(self, e: MachineSampled, view: RunView, running: str) -> dict:
        return dict(machine=e,
                    machine_samples=(*view.machine_samples, e)[-MACHINE_SAMPLES_KEPT:])

    def on_RunFinished(self, e: RunFinished, view: RunView, running: str) -> dict:
        return dict(finished=e, status="finished", pause=None)

    def on_RunCancelled(self, e: RunCancelled, view: RunView, running: str) -> dict:
        return dict(cancelled=e, status="cancelled", pause=None)

    def on_RunFailed(self, e: RunFailed, view: RunView, running: str) -> dict:
        return dict(failed=e, status="failed", pause=None)


_CHANGES = _Changes()


def reduce(view: RunView, event: Event) -> RunView:
    """The next view after `event`. Pure: `view` is not modified."""
    # t: the latest event's clock (a resumed run starts it at 0 again: see RunView.clock)
    changes: dict = {"t": event.t, "events_seen": view.events_seen + 1}
    running = "running" if view.status == "waiting" else view.status
    changes.update(dispatch(_CHANGES, event, view, running, default={}))
    return replace(view, **changes)


def reduce_all(events: Iterable[Event], view: Optional[RunView] = None) -> RunView:
    view = view or RunView()
    for e in events:
        view = reduce(view, e)
    return view
