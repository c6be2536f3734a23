"""A study followed while it runs (ashem_engine/study_progress.py), from a study directory
written step by step by hand: each run's events.jsonl and summary.json as a run writes them,
study.lock as the study process holds it. The helpers are shared with test_app_study.py."""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ashem_engine import events as ev
from ashem_engine.settings import Settings
from ashem_engine.study import (LOCK_FILE, STUDY_FILE, Configuration, StudyError, StudyPlan,
                                reopen_study, seed_dir)
from ashem_engine.study_progress import StudyFollower, study_progress, time_left
from ashem_engine.study_table import study_table, write_tables

NOW = 1_800_000_000.0  # the clock of these tests (wall seconds)
CONFIGS = ("base", "wide")


# -- a study directory, written as `ashem-engine study` writes it ---------------------------
def make_study(root: Path, configs=CONFIGS, seeds: int = 2) -> Path:
    def configuration(name: str) -> Configuration:
        s = Settings()
        return Configuration(name, f"{name}.toml",
                             s.replace(run=dataclasses.replace(s.run, name=name)))

    plan = StudyPlan(root, tuple(configuration(c) for c in configs), seeds)
    root.mkdir(parents=True)
    (root / STUDY_FILE).write_text(json.dumps(plan.to_json()), encoding="utf-8")
    return root


def hold(study: Path, pid: int | None = None) -> None:
    """study.lock as the study process writes it (this process by default: alive)."""
    (study / LOCK_FILE).write_text(f"{pid or os.getpid()}\n")


def release(study: Path) -> None:
    (study / LOCK_FILE).unlink()


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def start_run(study: Path, config: str, seed: int, stages: int = 2) -> Path:
    run = seed_dir(study, config, seed) / f"20260101T120000Z-{config}"
    run.mkdir(parents=True)
    (run / "settings.json").write_text("{}", encoding="utf-8")
    write_events(run, ev.RunStarted(
        name=config, run_dir=str(run), device="cpu", threads=1, settings={}, vocab_size=64,
        train_tokens=1000, val_tokens=100, test_tokens=100,
        stages=[{"stage": n, "layers": 2 * n, "max_epochs": 3} for n in range(1, stages + 1)]))
    return run


def stage_started(stage: int, t: float, max_epochs: int = 3) -> ev.StageStarted:
    return ev.StageStarted(stage=stage, layers=2 * stage, trainable_params=10, total_params=20,
                           lr=1e-3, patience=2, max_epochs=max_epochs, training_tokens=1000,
                           batches=10, t=t)


def batch(stage: int, epoch: int, t: float) -> ev.BatchProgress:
    return ev.BatchProgress(stage=stage, epoch=epoch, batch=5, batches=10, loss=3.0,
                            tokens_per_s=100.0, eta_s=5.0, t=t)


def epoch_ended(stage: int, epoch: int, t: float) -> ev.EpochEnded:
    return ev.EpochEnded(stage=stage, epoch=epoch, train_ppl=50.0, val_ppl=60.0, val_acc=0.2,
                         improved=True, patience_counter=0, patience=2, best_epoch=epoch,
                         best_val_ppl=60.0, seconds=10.0, t=t)


def stage_ended(stage: int, t: float) -> ev.StageEnded:
    return ev.StageEnded(stage=stage, epochs=3, best_epoch=3, best_val_ppl=60.0,
                         best_val_acc=0.2, stopped_early=False, seconds=30.0,
                         checkpoint="stage.pt", t=t)


def write_events(run: Path, *events: ev.Event, written: float = NOW) -> None:
    """Appends events as the engine does; the file's time is when the last was written."""
    with open(run / "events.jsonl", "a", encoding="utf-8") as f:
        for e in events:
            f.write(json.dumps(e.to_dict()) + "\n")
    os.utime(run / "events.jsonl", (written, written))


def end_run(run: Path, status: str, seconds: float, ppl: float | None = None,
            error: str = "") -> None:
    summary: dict = {"status": status, "run_dir": str(run), "seconds": seconds, "stages": []}
    if ppl is not None:
        summary["final"] = {"ppl": ppl, "accuracy": 0.25}
        summary["stages"] = [{"stage": 1, "best_val_ppl": ppl + 20, "best_epoch": 3}]
        summary["training_macs"] = {"total": 2e12}
    if error:
        summary["error"] = {"kind": "numeric", "message": error, "where": "stage 1"}
    (run / "summary.json").write_text(json.dumps(summary), encoding="utf-8")


def states(progress) -> dict:
    return {(r.config, r.seed): r.state for r in progress.runs}


# -- step by step ----------------------------------------------------------------------------
def test_a_study_followed_step_by_step(tmp_path):
    study = make_study(tmp_path / "the-study")
    follower = StudyFollower(study, clock=lambda: NOW)
    p = follower.read()
    assert (p.state, p.alive, p.finished, p.total) == ("stopped", False, 0, 4)
    assert set(states(p).values()) == {"waiting"} and p.left_s is None and p.table == {}

    hold(study)  # the study process starts: its first run is loading
    p = follower.read()
    assert p.state == "running" and p.alive
    assert states(p)[("base", 42)] == "starting" and states(p)[("wide", 42)] == "waiting"

    # 1. base, seed 42 runs: stage 1, its second epoch under way; last event 5 s ago
    base42 = start_run(study, "base", 42)
    write_events(base42, stage_started(1, t=1.0), epoch_ended(1, 1, t=30.0),
                 batch(1, 2, t=40.0), written=NOW - 5)
    p = follower.read()
    run = p.cell("base", 0)
    assert (run.state, run.stage, run.stages, run.epoch, run.max_epochs, run.phase) == \
        ("running", 1, 2, 2, 3, "training")
    assert p.running == run and run.run_dir == base42
    assert run.seconds == pytest.approx(45.0)  # 40 s of events, and 5 s since the last one
    assert p.elapsed_s == pytest.approx(45.0) and p.left_s is None

    # 2. it finished in 100 s: the table appears, the estimate too
    end_run(base42, "finished", seconds=100.0, ppl=400.0)
    write_tables(reopen_study(study))  # as the study does after each run
    p = follower.read()
    assert states(p)[("base", 42)] == "finished" and p.cell("base", 0).ppl == 400.0
    assert states(p)[("wide", 42)] == "starting"
    assert p.finished == 1 and p.finished_by_config == {"base": 1, "wide": 0}
    assert p.elapsed_s == pytest.approx(100.0)
    assert p.left_s == pytest.approx(3 * 100.0)  # three runs to go, 100 s each
    assert json.loads(json.dumps(p.table)) == \
        json.loads((study / "table.json").read_text())  # what table.json holds
    assert p.table["configurations"][0]["figures"]["final.ppl"]["mean"] == 400.0
    assert follower.read().table is p.table  # nothing new finished: not rebuilt

    # 3. wide, seed 42 runs, 20 s in (its last event just now), then into stage 2
    wide42 = start_run(study, "wide", 42)
    write_events(wide42, stage_started(1, t=1.0), batch(1, 1, t=20.0))
    p = follower.read()
    assert p.running.config == "wide" and p.running.seconds == pytest.approx(20.0)
    assert p.elapsed_s == pytest.approx(120.0)
    assert p.left_s == pytest.approx((100.0 - 20.0) + 2 * 100.0)
    write_events(wide42, epoch_ended(1, 3, t=50.0), stage_ended(1, t=55.0))
    assert follower.read().running.phase == "between stages"
    write_events(wide42, stage_started(2, t=60.0, max_epochs=5), batch(2, 1, t=70.0))
    run = follower.read().running
    assert (run.stage, run.epoch, run.max_epochs, run.phase) == (2, 1, 5, "training")

    # 4. it failed after 80 s and the study process ended
    end_run(wide42, "failed", seconds=80.0, error="the loss is NaN")
    release(study)
    p = follower.read()
    assert p.state == "failed" and not p.alive and p.running is None
    (failed,) = p.failed
    assert (failed.config, failed.seed, failed.error) == ("wide", 42, "the loss is NaN")
    assert p.elapsed_s == pytest.approx(180.0)
    assert p.left_s == pytest.approx((100.0 - 80.0) + 2 * 100.0)
    assert p.table is not None and p.table["finished_runs"] == 1


def test_a_run_no_process_runs_is_interrupted_and_its_clock_stops(tmp_path):
    study = make_study(tmp_path / "s", configs=("base",), seeds=1)
    hold(study, dead_pid())  # killed: its lock is left behind
    run = start_run(study, "base", 42)
    write_events(run, stage_started(1, t=1.0), batch(1, 2, t=40.0), written=NOW - 500)
    p = study_progress(study, clock=lambda: NOW)
    (cell,) = p.runs
    assert (cell.state, p.state, p.alive) == ("interrupted", "stopped", False)
    assert cell.seconds == pytest.approx(40.0) and p.running is None


def test_a_resumed_run_counts_its_earlier_attempts(tmp_path):
    study = make_study(tmp_path / "s", configs=("base",), seeds=1)
    hold(study)
    run = start_run(study, "base", 42)
    write_events(run, stage_started(1, t=1.0), batch(1, 1, t=30.0))
    resumed = ev.RunStarted(name="base", run_dir=str(run), device="cpu", threads=1,
                            settings={}, vocab_size=64, train_tokens=1000, val_tokens=100,
                            test_tokens=100, stages=[], resumed=True, seconds_before=30.0)
    write_events(run, resumed, batch(1, 2, t=10.0), written=NOW - 2)
    (cell,) = study_progress(study, clock=lambda: NOW).runs
    assert cell.seconds == pytest.approx(30.0 + 10.0 + 2.0)


def test_a_torn_last_line_waits_for_its_end(tmp_path):
    study = make_study(tmp_path / "s", configs=("base",), seeds=1)
    hold(study)
    run = start_run(study, "base", 42)
    follower = StudyFollower(study, clock=lambda: NOW)
    line = json.dumps(stage_started(2, t=5.0).to_dict()) + "\n"
    with open(run / "events.jsonl", "a", encoding="utf-8") as f:
        f.write(line[:20])  # the engine is mid-write
    assert follower.read().running.stage is None
    with open(run / "events.jsonl", "a", encoding="utf-8") as f:
        f.write(line[20:])
    assert follower.read().running.stage == 2


def test_the_table_is_study_tables_for_the_finished_runs(tmp_path):
    study = make_study(tmp_path / "s")
    for config, seed, ppl in (("base", 42, 400.0), ("base", 43, 410.0), ("wide", 42, 380.0)):
        end_run(start_run(study, config, seed), "finished", seconds=100.0, ppl=ppl)
    p = study_progress(study)
    assert p.table == study_table(reopen_study(study))
    base, wide = p.table["configurations"]
    assert base["figures"]["final.ppl"]["mean"] == pytest.approx(405.0)
    assert base["figures"]["final.ppl"]["half_width"] is not None and wide["figures"][
        "final.ppl"]["n"] == 1
    assert p.table["differences"][0]["figure"] == "final.ppl"  # wide − base, seed 42
    assert p.left_s == pytest.approx(100.0)  # one run to go


def test_a_finished_study_has_nothing_left(tmp_path):
    study = make_study(tmp_path / "s", configs=("base",), seeds=1)
    end_run(start_run(study, "base", 42), "finished", seconds=50.0, ppl=400.0)
    p = study_progress(study)
    assert (p.state, p.left_s, p.elapsed_s) == ("finished", 0.0, 50.0)


def test_time_left_needs_a_finished_run():
    assert time_left([]) is None


def test_a_directory_that_is_not_a_study_is_one_line(tmp_path):
    with pytest.raises(StudyError, match="does not exist"):
        study_progress(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(StudyError, match="not a study directory"):
        study_progress(tmp_path / "empty")


def test_reading_writes_nothing(tmp_path):
    study = make_study(tmp_path / "s")
    hold(study)
    end_run(start_run(study, "base", 42), "finished", seconds=50.0, ppl=400.0)
    write_events(start_run(study, "wide", 42), stage_started(1, t=1.0))
    before = {p: p.stat().st_mtime_ns for p in study.rglob("*")}
    study_progress(study)
    assert {p: p.stat().st_mtime_ns for p in study.rglob("*")} == before
