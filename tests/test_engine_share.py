"""Stage 1 shared within a study (ashem_engine/share.py): configurations whose stage-1 settings
are equal train stage 1 once per seed, and the others take it with the same figures, bit for
bit, as training it again; the study's table says which runs shared it."""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from ashem_engine import events as ev
from ashem_engine.control import RunControl
from ashem_engine.rundir import STAGE_ONE_END_FILE, load_checkpoint
from ashem_engine.run import resume_ashem, run_ashem
from ashem_engine.share import find_donor, key_of, stage_one_key
from ashem_engine.study import grow_study, open_study, plan_study, study_runs
from ashem_engine.study_run import run_study
from engine_support import single_thread  # noqa: F401  (autouse fixture)
from golden_runs import differences, scrub
from synthetic import synthetic_splits, write_corpus
from test_engine_cli import cli
from test_engine_study import write_tiny_toml
from tiny import sets, tiny_settings

QUICK = ["stages.1.max_epochs=2", "stages.2.max_epochs=1"]
SHARED_LOG = "stage 1 shared with "


# -- the key -----------------------------------------------------------------------------------

@pytest.mark.parametrize("other", [
    "stages.2.hard_ratio=0.3", "stages.2.lr=5e-4", "stages.2.context=sequence",
    "mining.split=train", "mining.histogram_bins=10", "evaluation.split=test",
    "evaluation.sweep_points=0", "run.name=other", "run.runs_dir=elsewhere",
    "run.pause_at=[]", "run.machine_sample_s=1", "run.loggers=[]"])
def test_the_key_leaves_out_what_stage_1_does_not_read(tmp_path, other):
    assert stage_one_key(tiny_settings(tmp_path, other)) == stage_one_key(tiny_settings(tmp_path))


@pytest.mark.parametrize("other", [
    "stages.1.lr=2e-3", "stages.1.max_epochs=5", "stages.1.layers=1", "run.seed=7",
    "model.dim=32", "model.rope_base=500.0", "optimizer.weight_decay=0.1",
    "optimizer.grad_clip=0.5", "data.seq_len=16", "run.precision=bf16", "run.threads=2",
    "run.progress_events_per_epoch=3", "joint.enabled=true", "joint.weights=depth",
    "run.head_tiles=rows", "run.head_tiles=64x512"])
def test_the_key_holds_what_stage_1_reads(tmp_path, other):
    assert stage_one_key(tiny_settings(tmp_path, other)) != stage_one_key(tiny_settings(tmp_path))


def test_the_key_holds_the_joint_table_and_a_joint_runs_later_stages(tmp_path):
    plain = tiny_settings(tmp_path).to_dict()
    joint = json.loads(json.dumps(plain))
    joint["joint"] = {**(joint.get("joint") or {}), "enabled": True, "weights": "equal"}
    assert key_of(joint) != key_of(plain)
    depth = json.loads(json.dumps(joint))
    depth["joint"]["weights"] = "depth"
    assert key_of(depth) != key_of(joint)
    deeper = json.loads(json.dumps(joint))
    deeper["stages"][1]["layers"] = 6  # a joint run trains every exit in its stage 1
    assert key_of(deeper) != key_of(joint)
    plain_deeper = json.loads(json.dumps(plain))
    plain_deeper["stages"][1]["layers"] = 6  # ASHEM's stage 1 does not see stage 2
    assert key_of(plain_deeper) == key_of(plain)


# -- a study of A and B, where B takes A's stage 1 ---------------------------------------------

def with_stage_two(text: str, line: str) -> str:
    """A settings file's text with `line` added to its second [[stages]] table."""
    head, tail = text.rsplit("[[stages]]", 1)
    return f"{head}[[stages]]\n{line}{tail}"


def read(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """A 1-seed study of A and B (B: another stage-2 hard ratio), and B run on its own."""
    tmp = tmp_path_factory.mktemp("share")
    data = write_corpus(tmp / "data", synthetic_splits())
    a = write_tiny_toml(tmp / "a.toml", data)
    b = tmp / "b.toml"
    b.write_text(with_stage_two(a.read_text(), "hard_ratio = 0.3\n"))
    plan = open_study(plan_study([str(a), str(b)], 1, QUICK, str(tmp / "s")))
    notes: list = []
    assert run_study(plan, [], RunControl, notes.append).status == "finished"
    donor, taker = study_runs(plan)
    settings = taker.settings()
    alone = run_ashem(settings.replace(run=dataclasses.replace(settings.run,
                                                               runs_dir=str(tmp / "alone"))))
    assert alone.status == "finished"
    return plan, donor.run_dir, taker.run_dir, alone.run_dir, notes


def events_of(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]


def without_sharing(value):
    """A run's record without what only a run that took stage 1 has: the Log line saying so,
    StageEnded.shared_from and summary.json's stage_1_shared_from."""
    if isinstance(value, dict):
        return {k: without_sharing(v) for k, v in value.items()
                if k not in ("shared_from", "stage_1_shared_from")}
    if isinstance(value, list):
        return [without_sharing(v) for v in value if not (
            isinstance(v, dict) and v.get("kind") == "Log" and SHARED_LOG in v["message"])]
    return value


def reported(run_dir: Path) -> dict:
    return scrub({"events": events_of(run_dir), "summary": read(run_dir / "summary.json"),
                  "sweep": read(run_dir / "sweep.json")})


def test_b_takes_its_stage_1_from_a_and_says_so(shared):
    _, a, b, _, notes = shared
    events = events_of(b)
    (log,) = [e for e in events if e["kind"] == "Log" and SHARED_LOG in e["message"]]
    assert log["message"] == f"stage 1 shared with {a}: same stage-1 settings"
    ended = [e for e in events if e["kind"] == "StageEnded"]
    assert ended[0]["shared_from"] == str(a) and ended[1]["shared_from"] is None
    assert ended[0]["checkpoint"] == str(b / "stage-1-best.pt")  # its own copy
    assert read(b / "summary.json")["stage_1_shared_from"] == str(a)
    assert "stage_1_shared_from" not in read(a / "summary.json")
    assert all(e.get("shared_from") is None for e in events_of(a) if e["kind"] == "StageEnded")
    # replayed, not trained again: the epochs' own clocks are A's
    seconds = [[e["seconds"] for e in events_of(run) if e["kind"] == "EpochEnded"
                and e["stage"] == 1] for run in (a, b)]
    assert seconds[0] == seconds[1] and len(seconds[0]) == 2
    ours, theirs = (load_checkpoint(run / "stage-1-best.pt")["model"] for run in (b, a))
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)
    assert load_checkpoint(b / STAGE_ONE_END_FILE, required="rng")["stage_done"]
    start = next(n for n in notes if n.action == "start" and n.config == "b")
    assert start.detail == "stage 1 shared from a@42"
    a_start = next(n for n in notes if n.action == "start" and n.config == "a")
    assert a_start.detail == ""


def test_b_taking_its_stage_1_reports_what_b_alone_reports(shared):
    _, _, b, alone, _ = shared
    taken, trained = without_sharing(reported(b)), without_sharing(reported(alone))
    assert differences(trained, taken, "run", rel_tol=0.0) == []
    assert differences(taken, trained, "run", rel_tol=0.0) == []  # nothing more either
    kinds = [e["kind"] for e in taken["events"]]
    assert kinds == [e["kind"] for e in trained["events"]]
    # the final report and the sweep to the digit
    assert read(b / "summary.json")["final"] == read(alone / "summary.json")["final"]
    assert read(b / "sweep.json")["series"] == read(alone / "sweep.json")["series"]


def test_the_table_names_the_runs_that_shared_stage_1(shared):
    plan, _, _, _, _ = shared
    table = read(plan.directory / "table.json")
    assert table["stage_1_shared"] == [{"run": "b@42", "from": "a@42"}]
    runs = {c["name"]: c["runs"] for c in table["configurations"]}
    assert runs["a"][0]["stage_1_shared_from"] is None
    assert runs["b"][0]["stage_1_shared_from"] == "a@42"
    assert "stage 1 shared: b@42 from a@42" in (plan.directory / "table.md").read_text()


def test_a_run_that_took_stage_1_and_was_stopped_resumes_on_its_own(shared, tmp_path):
    plan, a, _, alone, _ = shared
    _, taker = study_runs(plan)
    settings = taker.settings()
    settings = settings.replace(run=dataclasses.replace(settings.run, runs_dir=str(tmp_path)))
    control = RunControl()

    def cancel_in_stage_two(event) -> None:
        if isinstance(event, ev.EpochEnded) and event.stage == 2:
            control.cancel()
    stopped = run_ashem(settings, [cancel_in_stage_two], control, stage_one_from=a)
    assert stopped.status == "cancelled"
    done = resume_ashem(stopped.run_dir)
    assert done.status == "finished"
    assert done.summary["stage_1_shared_from"] == str(a)  # the resumed attempt keeps it
    assert done.summary["final"] == read(alone / "summary.json")["final"]


# -- when stage 1 is not shared ------------------------------------------------------------------

def test_a_donor_with_other_stage_1_settings_or_missing_files_is_refused(shared, tmp_path):
    plan, a, _, alone, _ = shared
    _, taker = study_runs(plan)
    settings = taker.settings()
    settings = settings.replace(run=dataclasses.replace(settings.run, runs_dir=str(tmp_path)))
    faster = settings.replace(stages=(dataclasses.replace(settings.stages[0], lr=2e-3),
                                      *settings.stages[1:]))
    other = run_ashem(faster, stage_one_from=a)
    assert other.status == "finished"
    assert warnings(other.run_dir) == [f"stage 1 not shared with {a}: its stage-1 settings "
                                       "differ; training it"]
    assert "stage_1_shared_from" not in other.summary
    assert other.summary["final"] != read(alone / "summary.json")["final"]  # its own lr
    copy = tmp_path / "copy"
    shutil.copytree(a, copy)
    (copy / STAGE_ONE_END_FILE).unlink()
    trained = run_ashem(settings, stage_one_from=copy)
    assert trained.status == "finished"
    (warning,) = warnings(trained.run_dir)
    assert warning.startswith(f"stage 1 not shared with {copy}: checkpoint ")
    assert "stage-1-end.pt' does not exist; training it" in warning
    assert "stage_1_shared_from" not in trained.summary
    assert trained.summary["final"] == read(alone / "summary.json")["final"]  # trained again


def warnings(run_dir: Path) -> list[str]:
    return [e.message for e in ev.read_events(run_dir / "events.jsonl")
            if isinstance(e, ev.Log) and e.level == "warning"]


def test_a_donor_whose_end_point_is_gone_is_not_used(tmp_path):
    data = write_corpus(tmp_path / "data", synthetic_splits())
    a = write_tiny_toml(tmp_path / "a.toml", data)
    b = tmp_path / "b.toml"
    b.write_text(with_stage_two(a.read_text(), "hard_ratio = 0.3\n"))
    one = ["stages.1.max_epochs=1", "stages.2.max_epochs=1", "evaluation.sweep_points=0"]
    plan = open_study(plan_study([str(a)], 1, one, str(tmp_path / "s")))
    assert run_study(plan, []).status == "finished"
    (donor,) = study_runs(plan)
    (donor.run_dir / STAGE_ONE_END_FILE).unlink()
    grown = grow_study(plan.directory, [str(b)])
    assert find_donor(grown, study_runs(grown)[1]) is None
    notes: list = []
    assert run_study(grown, [], RunControl, notes.append).status == "finished"
    _, taker = study_runs(grown)
    assert "stage_1_shared_from" not in read(taker.run_dir / "summary.json")
    assert not any(SHARED_LOG in e.get("message", "") for e in events_of(taker.run_dir))
    assert [n.detail for n in notes if n.action == "start"] == [""]
    assert read(plan.directory / "table.json")["stage_1_shared"] == []


def test_no_share_trains_every_stage_1(tmp_path, monkeypatch):
    root = str(Path(__file__).resolve().parents[1])  # the command runs this tree's engine
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [root, os.environ.get(
        "PYTHONPATH")])))
    data = write_corpus(tmp_path / "data", synthetic_splits())
    a = write_tiny_toml(tmp_path / "a.toml", data)
    b = tmp_path / "b.toml"
    b.write_text(with_stage_two(a.read_text(), "hard_ratio = 0.3\n"))
    one = ["stages.1.max_epochs=1", "stages.2.max_epochs=1", "evaluation.sweep_points=0"]
    p = cli(tmp_path, "study", str(a), str(b), "--seeds", "1", *sets(*one), "--dir", "s",
            "--no-share", timeout=300)
    assert p.returncode == 0, p.stderr
    assert "stage 1 shared" not in p.stdout
    for run in sorted((tmp_path / "s" / "runs").glob("*/seed-42/*")):
        assert "stage_1_shared_from" not in read(run / "summary.json")
        assert (run / STAGE_ONE_END_FILE).is_file()  # every run could be a donor
    assert read(tmp_path / "s" / "table.json")["stage_1_shared"] == []
    # the same study shared: the command line says so
    q = cli(tmp_path, "study", str(a), str(b), "--seeds", "1", *sets(*one), "--dir", "t",
            timeout=300)
    assert q.returncode == 0, q.stderr
    assert "b seed 42: starting (stage 1 shared from a@42)" in q.stdout
    assert "stage 1 shared: b@42 from a@42" in q.stdout  # the printed table too
