"""The run plan (ashem_engine/plan.py): the one list of a run's steps and hold points, which
settings validation, the pipeline and its control, the summary, the app's timeline and its
steering read; the one rewind rule for resumed attempts; plans rebuilt for older logs."""
from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path

import pytest
from app_events import FakeControl, make_events, until

from ashem_app.app import AshemApp
from ashem_app.messages import SteerRun
from ashem_app.sources import ControlledSource
from ashem_app.state import RunView, reduce, reduce_all
from ashem_engine import events as ev
from ashem_engine import plan
from ashem_engine.control import Cancelled, RunControl
from ashem_engine.events import Paused, ThresholdComputed
from ashem_engine.settings import SettingsError, load_settings
from ashem_engine.steps import Pipeline
from ashem_engine.summary import NOTHING_DONE, SummaryReducer, base_summary, rebuild

OLD_RUNS = Path(__file__).parent / "fixtures"
CALIBRATION = plan.Step("calibration-1", "calibration", 1, "Calibration", "calibrate 1",
                        "calibration-1", "after calibrating", steerable=True)


def with_calibration(build):
    """A plan builder with a new kind of step after stage 1, held at and steerable."""
    def built(stages: int, sweep: bool) -> tuple:
        steps = build(stages, sweep)
        return (steps[0], CALIBRATION, *steps[1:])
    return built


def test_the_plan_names_each_step_and_the_hold_point_after_it():
    steps = plan.of_settings(load_settings(None, []))
    assert [(s.name, s.boundary) for s in steps] == [
        ("train stage 1", "stage-1"), ("mine and grow 2", "mining-1"),
        ("train stage 2", "stage-2"), ("evaluate", None), ("sweep", "evaluation")]
    assert [s.stage for s in steps] == [1, 1, 2, None, None]  # mining: at stage 1's exit
    assert [s.steerable for s in steps] == [False, True, False, False, False]
    assert steps[1].where == "after mining at stage 1's exit"
    unswept = plan.build(3, sweep=False)
    assert [s.boundary for s in unswept] == ["stage-1", "mining-1", "stage-2", "mining-2",
                                             "stage-3", "evaluation"]
    assert unswept[-1].where == "after the final evaluation"


def test_a_step_added_to_the_plan_reaches_every_reader(monkeypatch, tmp_path):
    """Settings validation, the pipeline's step and control boundary, RunStarted, the
    timeline and steering all follow the plan: a new kind of step needs no other edit
    (but the Pipeline's method for it)."""
    sets = ['run.pause_at=["calibration-1"]']
    with pytest.raises(SettingsError, match="hold point"):
        load_settings(None, sets)
    monkeypatch.setattr(plan, "build", with_calibration(plan.build))
    settings = load_settings(None, sets)
    assert settings.run.pause_at == ("calibration-1",)

    ran, held = [], []
    monkeypatch.setattr(Pipeline, "RUNS", {**Pipeline.RUNS, "calibration": "calibrate"})
    monkeypatch.setattr(Pipeline, "calibrate", lambda self, step, state: ran.append(step.id),
                        raising=False)
    control = RunControl(pause_at=None)
    control.starts(settings.run.pause_at)

    def cancel_when_held(where, reason, boundary):
        held.append((where, reason, boundary))
        control.cancel()

    control.on_pause = cancel_when_held
    pipeline = Pipeline(settings, tmp_path, None, control, None)
    step = pipeline.steps(None)[1]
    with pytest.raises(Cancelled):
        pipeline.run(step, None)
    assert ran == ["calibration-1"]
    assert held == [("after calibrating", "pause_at", "calibration-1")]

    carried = [asdict(s) for s in plan.of_settings(settings)]  # as RunStarted.plan
    monkeypatch.undo()  # the app reads the plan the run carried, not a builder of its own
    events = until(make_events(), boundary="stage-1")
    events[0] = replace(events[0], plan=carried)
    view = reduce_all(events)
    assert [s.id for s in view.steps()] == ["stage-1", "calibration-1", "mining-1", "stage-2",
                                            "evaluation"]
    assert view.current_step().id == "calibration-1" and not view.can_steer
    at_calibration = reduce(view, Paused("after calibrating", "pause_at", "calibration-1"))
    assert at_calibration.can_steer
    mined = reduce(at_calibration, next(e for e in make_events()
                                        if isinstance(e, ThresholdComputed)))
    assert mined.step_state(mined.step("calibration-1")) == "done"  # a later step started


async def test_the_app_steers_where_the_plan_says_a_step_is_steerable():
    control = FakeControl()
    control.ratios = []
    control.set_hard_ratio = control.ratios.append
    app = AshemApp(ControlledSource(control), popups=False)
    events = until(make_events(), boundary="stage-1")
    events[0] = replace(events[0], plan=[asdict(s) for s in
                                         with_calibration(plan.build)(2, False)])
    async with app.run_test(size=(100, 30)) as pilot:
        app.feed(events)
        await pilot.pause()
        app.post_message(SteerRun(0.3))  # held after stage 1: not steerable
        await pilot.pause()
        app.feed([Paused("after calibrating", "pause_at", "calibration-1", t=9000.0)])
        await pilot.pause()
        app.post_message(SteerRun(0.4))
        await pilot.pause()
        assert control.ratios == [0.4]


@pytest.mark.parametrize("point, stages, mined, epochs, started", [
    ({"stage": 2, "epoch": 1, "stage_done": False}, [1], [1], {1: 4, 2: 1}, [1, 2]),
    ({"stage": 1, "epoch": 3, "stage_done": True}, [1], [], {1: 3}, [1]),
    ({"stage": 2, "epoch": 0, "stage_done": False}, [1], [1], {1: 4}, [1, 2]),
    (NOTHING_DONE, [], [], {}, []),
])
def test_the_rewind_rule(point, stages, mined, epochs, started):
    """What a resumed attempt keeps: the steps before its resume point (where the pipeline
    starts again), and the stage it resumes in up to the point's epoch."""
    steps = plan.build(3, True)
    kept = plan.rewind(steps, point)
    at = plan.resumes_at(steps, point["stage"], point["stage_done"])
    assert kept.kept == {(s.kind, s.stage) for s in steps[:at]}
    assert [n for n in (1, 2, 3) if kept.keeps(plan.STAGE, n)] == stages
    assert [n for n in (1, 2, 3) if kept.keeps(plan.MINING, n)] == mined
    assert {n: sum(kept.keeps_epoch(n, e) for e in range(1, 5)) for n in (1, 2, 3)
            if any(kept.keeps_epoch(n, e) for e in range(1, 5))} == epochs
    assert [n for n in (1, 2, 3) if kept.keeps_start(n)] == started


def test_the_summary_and_the_app_rewind_by_the_one_rule(monkeypatch):
    calls = []
    rewind = plan.rewind
    monkeypatch.setattr(plan, "rewind", lambda steps, point: calls.append(point) or
                        rewind(steps, point))
    events = make_events()
    head = until(events, predicate=lambda e: e.kind == "EpochEnded" and e.stage == 2
                 and e.epoch == 3)
    point = {"stage": 2, "epoch": 2, "stage_done": False}
    again = replace(events[0], resumed=True, resume_point=point)
    view = reduce_all([*head, again])
    summary = SummaryReducer(base_summary("run", events[0].settings), [*head, again]).summary
    assert calls == [point, NOTHING_DONE, point]  # the app's resumed RunStarted, the summary's two
    assert [e.epoch for e in view.stage_epochs(2)] == [1, 2]
    assert list(view.stage_ended) == [r["stage"] for r in summary["stages"]] == [1]
    assert list(view.hard_collected) == [m["stage"] for m in summary["mining"]] == [1]


@pytest.mark.parametrize("name", ["old-run-stage2-epoch1", "old-run-after-stage1"])
def test_a_run_logged_before_the_plan_gets_it_from_its_settings(name):
    events = ev.read_events(OLD_RUNS / name / "events.jsonl")
    started = next(e for e in events if isinstance(e, ev.RunStarted))
    assert started.plan == []
    assert plan.of_run(started) == plan.build(2, sweep=True)
    view = reduce_all(events)
    assert [s.id for s in view.steps()] == ["stage-1", "mining-1", "stage-2", "evaluation"]
    assert rebuild(OLD_RUNS / name)["stages"]
    assert RunView().steps() == [s for s in plan.build(1, False) if s.label]
