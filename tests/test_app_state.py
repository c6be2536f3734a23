"""The pure parts of the app: the reducer, the step timeline, cards, log lines, export,
the replay follower and the key registry (no Textual app running)."""
from __future__ import annotations

import csv
import json
from dataclasses import replace

from app_events import RUN_DIR, THRESHOLD, cancelled_after, make_events, until, write_events
from rich.console import Console

from ashem_app import keys
from ashem_app.describe import describe
from ashem_app.export import export_metrics, metrics_rows
from ashem_app.replay import EventFollower
from ashem_app.screens.inspect import stage_summary
from ashem_app.state import RunView, reduce, reduce_all
from ashem_app.widgets.cards import card_values
from ashem_app.widgets.timeline import step_figure
from ashem_engine.events import BatchProgress, Paused, Resumed, RunFailed, StageEnded


def test_reducer_is_pure_and_follows_the_run():
    events = make_events()
    v0 = RunView()
    v1 = reduce(v0, events[0])
    assert v0.status == "waiting" and v0.started is None  # untouched
    assert v1.status == "running" and v1.name == "reference"
    view = reduce_all(events)
    assert view.status == "finished"
    assert [s.id for s in view.steps()] == ["stage-1", "mining-1", "stage-2", "evaluation"]
    assert all(view.step_state(s) == "done" for s in view.steps())
    assert len(view.stage_epochs(1)) == 4 and len(view.stage_epochs(2)) == 7
    assert view.best_epoch(1).epoch == 3 and view.best_epoch(2).epoch == 4
    assert [p.boundary for p in view.holds] == ["stage-1", "mining-1"]
    assert view.t == events[-1].t and view.events_seen == len(events)


def test_steps_follow_the_stage_plan_for_n_stages():
    events = make_events()
    started = events[0]
    started.stages = [*started.stages, {"stage": 3, "layers": 6, "max_epochs": 20}]
    # a log from before RunStarted carried the plan: the plan is built from the settings
    started.settings = {**started.settings,
                        "stages": [*started.settings["stages"], {"layers": 6, "max_epochs": 20}]}
    view = reduce(RunView(), started)
    assert [s.id for s in view.steps()] == ["stage-1", "mining-1", "stage-2", "mining-2",
                                            "stage-3", "evaluation"]


def test_current_step_held_and_failed_states():
    events = make_events()
    held = reduce_all(until(events, boundary="stage-1"))
    assert held.status == "paused" and held.held_at == "stage-1"
    assert held.current_step().id == "mining-1"
    assert held.step_state(held.step("mining-1")) == "held"
    assert held.step_state(held.step("stage-1")) == "done"
    mid = reduce_all(until(events, predicate=lambda e: isinstance(e, BatchProgress)
                           and e.stage == 2))
    assert mid.status == "running" and mid.current_step().id == "stage-2"
    assert mid.progress.stage == 2
    failed = reduce_all(make_events(fail_at="stage-2"))
    assert failed.status == "failed" and failed.failed.error_kind == "numeric"
    assert failed.step_state(failed.step("stage-2")) == "failed"
    cancelled = reduce_all(cancelled_after(until(events, kind="EpochEnded")))
    assert cancelled.status == "cancelled"


def test_user_pause_and_resume():
    events = until(make_events(), kind="EpochEnded")
    view = reduce_all(events)
    view = reduce(view, Paused(where="stage 1, epoch 2, batch 40/160", reason="user", t=9.0))
    assert view.status == "paused" and view.held_at is None and view.holds == ()
    view = reduce(view, Resumed(where="stage 1, epoch 2, batch 40/160", t=12.0))
    assert view.status == "running" and view.pause is None


def test_step_figures_and_cards_are_event_fields():
    view = reduce_all(make_events())
    steps = {s.id: s for s in view.steps()}
    assert step_figure(view, steps["stage-1"]) == "best PPL 985.59"
    assert step_figure(view, steps["mining-1"]) == f"thr {THRESHOLD:.4f} · 32,768"
    assert step_figure(view, steps["stage-2"]) == "best PPL 776.71"
    assert step_figure(view, steps["evaluation"]) == "PPL 776.71 · 15.8 %"
    cards = card_values(view)
    assert cards["val-ppl"] == ("781.24", "best 776.71 s2 e4")
    assert cards["val-acc"] == ("15.75 %", "at best 15.80 %")
    assert cards["hard-ppl"][0] == "675.27" and "2,854.97" in cards["hard-ppl"][1]
    assert cards["threshold"][0] == "0.1596"
    assert cards["hard-tokens"] == ("32,768 / 65,536", "50.0 % · conf 0.0653")
    assert cards["routing"][0] == "72.6 % / 27.4 %"
    assert cards["cost"] == ("63.72 %", "honest 123.4 %")
    # during stage 2, routing comes from EpochEnded.shallow_ratio
    mid = reduce_all(until(make_events(), predicate=lambda e: e.kind == "EpochEnded"
                           and e.stage == 2 and e.epoch == 2))
    assert card_values(mid)["routing"] == ("70.2 % shallow", "s2 e2 val")


def test_log_lines():
    events = make_events(fail_at="stage-2")
    lines = [describe(e) for e in events]
    assert all(line is None for e, line in zip(events, lines) if isinstance(e, BatchProgress))
    text = "\n".join(line.plain for line in lines if line is not None)
    assert "threshold 0.1596" in text and "holding at boundary mining-1" in text
    assert "run FAILED (numeric)" in text and "NaN" in text


def test_export_csv_and_json(tmp_path):
    view = reduce_all(make_events())
    csv_path, json_path = export_metrics(view, tmp_path, prefix="x-")
    rows = list(csv.DictReader(open(csv_path)))
    assert len(rows) == 11 and rows[2]["val_ppl"] == "985.59" and rows[0]["hard_ppl"] == ""
    doc = json.loads(json_path.read_text())
    assert doc["run"]["run_dir"] == RUN_DIR and doc["evaluation"]["ppl"] == 776.71
    assert doc["hard_examples"][0]["count"] == 32_768 and len(doc["epochs"]) == 11
    assert metrics_rows(view)[4]["shallow_ratio"] == 0.688


def test_follower_reads_complete_lines_only(tmp_path):
    events = make_events()
    path = write_events(events[:10], tmp_path / "events.jsonl", torn_tail='{"kind": "Ep')
    follower = EventFollower(path)
    assert [e.kind for e in follower.poll()] == [e.kind for e in events[:10]]
    assert follower.poll() == [] and not follower.done
    with open(path, "a") as f:  # the writer finishes the torn line with garbage, then more
        f.write('ochEnded"\n')
        for e in events[10:]:
            f.write(json.dumps(e.to_dict()) + "\n")
    rest = follower.poll()
    assert len(rest) == len(events) - 10 and follower.skipped == 1 and follower.done
    assert isinstance(rest[-1], type(events[-1]))


def test_key_registry_feeds_bindings_help_and_palette():
    ids = [a.id for a in keys.ACTIONS]
    assert len(ids) == len(set(ids))
    app_bindings = keys.bindings("app")
    assert {b.id for b in app_bindings} == {a.id for a in keys.specs("app")}
    assert all(b.id for b in app_bindings)
    rows = dict(keys.help_rows("app"))
    assert rows["space"].startswith("Pause") and "1…9" in rows  # number keys: one row
    assert {a.action for a in keys.palette_actions()} >= {"toggle_pause", "request_quit",
                                                         "export_metrics", "screenshot"}


def test_failed_event_from_fixture_has_run_dir():
    failed = make_events(fail_at="stage-2")[-1]
    assert isinstance(failed, RunFailed) and failed.run_dir == RUN_DIR


def test_a_resumed_run_carries_on_in_the_same_view(tmp_path):
    events = make_events()
    head = cancelled_after(until(events, predicate=lambda e: e.kind == "EpochEnded"
                                 and e.stage == 2 and e.epoch == 2))
    view = reduce_all(head)
    assert view.status == "cancelled"
    started = events[0]
    resumed = type(started)(**{k: v for k, v in started.__dict__.items() if k != "t"})
    resumed.resumed, resumed.t = True, 3.0
    view = reduce(view, resumed)
    assert view.status == "running" and view.cancelled is None and view.t == 3.0
    assert len(view.stage_epochs(2)) == 2 and view.step_state(view.step("stage-2")) == "running"
    assert "run 'reference' resumed on cpu" in describe(resumed).plain
    # the follower keeps reading after RunCancelled (a resume appends), stops after RunFinished
    path = write_events(head, tmp_path / "events.jsonl")
    follower = EventFollower(path)
    follower.poll()
    assert not follower.done
    with open(path, "a") as f:
        f.write(json.dumps(resumed.to_dict()) + "\n")
        f.write(json.dumps(events[-1].to_dict()) + "\n")
    assert [e.kind for e in follower.poll()] == ["RunStarted", "RunFinished"]
    assert follower.done


def test_docs_list_every_key():
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[1] / "docs" / "APP.md").read_text()
    for scope in ("app", "inspect"):
        for spec in keys.specs(scope):
            if not spec.group:
                assert f"`{keys.display_key(spec)}`" in doc, spec.id


def test_run_directories_written_before_the_redesign_still_replay():
    """tests/fixtures holds run directories the engine wrote before the cascade and the
    pipeline of steps; their events still build the view the dashboard shows."""
    from pathlib import Path

    from ashem_app.describe import describe as line_of
    from ashem_engine.events import read_events

    fixtures = Path(__file__).parent / "fixtures"
    for run_dir, stages_done in (("old-run-after-stage1", 1), ("old-run-stage2-epoch1", 1)):
        events = read_events(fixtures / run_dir / "events.jsonl")
        view = reduce_all(events)
        assert view.status == "cancelled", run_dir
        assert len(view.stage_ended) == stages_done, run_dir
        assert view.epochs and view.epochs[0].val_ppl > 0
        assert all(line_of(e) is not None or e.kind == "BatchProgress" for e in events)


def test_a_resume_drops_what_is_redone_and_keeps_one_run_clock():
    """The resumed RunStarted's resume_point says what is done again (dropped from the view,
    as from the engine's summary); its seconds_before moves the clock on."""
    from dataclasses import replace

    events = make_events()
    head = cancelled_after(until(events, predicate=lambda e: e.kind == "EpochEnded"
                                 and e.stage == 2 and e.epoch == 3))
    epoch_3 = head[-2]
    assert (epoch_3.kind, epoch_3.stage, epoch_3.epoch) == ("EpochEnded", 2, 3)
    resumed = replace(events[0], resumed=True, t=0.0, seconds_before=1000.0,
                      resume_point={"stage": 2, "epoch": 2, "stage_done": False})
    view = reduce(reduce_all(head), resumed)
    assert [e.epoch for e in view.stage_epochs(2)] == [1, 2]  # epoch 3 is done again
    assert 1 in view.stage_ended and 1 in view.hard_collected and view.evaluation is None
    assert view.clock == 1000.0
    redone = replace(epoch_3, t=60.0)
    view = reduce(view, redone)
    assert [e.epoch for e in view.stage_epochs(2)] == [1, 2, 3] and view.clock == 1060.0
    assert describe(redone, view.clock_offset).plain.startswith("  17:40  stage 2 epoch 3")
    finished = replace(events[-1], seconds=90.0, t=90.0)
    assert "run finished in 16:30" in describe(finished, 900.0).plain
    hold = Paused(where="after stage 2", reason="pause_at", boundary="stage-2", t=70.0)
    assert reduce(view, hold).hold_clock("stage-2") == 1070.0


def test_a_stages_training_compute_is_shown_from_its_event():
    events = [replace(e, training_macs=4.21e12, selection_macs=3.5e9)
              if isinstance(e, StageEnded) else e for e in make_events()]
    console = Console(width=100, record=True)
    console.print(stage_summary(reduce_all(events), 1))
    assert "4.21 TMAC · selection 3.5 GMAC" in console.export_text()
    ended = next(e for e in events if isinstance(e, StageEnded))
    assert "trained 4.21 TMAC" in describe(ended).plain
    console.print(stage_summary(reduce_all(make_events()), 1))  # older logs: no row
    assert console.export_text().count("TMAC") == 0
