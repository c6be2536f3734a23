"""run.training_macs_budget_from: within a study, a configuration trained on the training MACs
the named configuration's run at the same seed spent (test PPL at equal training compute,
matched seed by seed)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from ashem_engine.control import RunControl
from ashem_engine.run import run_ashem
from ashem_engine.study import StudyError, open_study, plan_study, study_runs
from ashem_engine.study_run import run_study
from engine_support import single_thread  # noqa: F401  (autouse fixture)
from synthetic import synthetic_splits, write_corpus
from test_engine_study import write_tiny_toml
from tiny import tiny_settings

QUICK = ["stages.1.max_epochs=2"]


def read(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def plain_four_layers(a_text: str, source: str) -> str:
    """A one-stage 4-layer model's settings file from the tiny two-stage one."""
    head = a_text.split("[[stages]]", 1)[0]
    run = f'[run]\ntraining_macs_budget_from = "{source}"\n'
    head = head.replace("[run]\n", run, 1) if "[run]\n" in head else run + head
    return head + "[[stages]]\nlayers = 4\nlr = 1e-3\nmax_epochs = 6\npatience = 6\n"


def test_the_matched_run_trains_on_the_named_runs_training_macs(tmp_path):
    data = write_corpus(tmp_path / "data", synthetic_splits())
    a = write_tiny_toml(tmp_path / "a.toml", data)
    b = tmp_path / "b.toml"
    b.write_text(plain_four_layers(a.read_text(), "a"))
    plan = open_study(plan_study([str(a), str(b)], 1, QUICK, str(tmp_path / "s")))
    assert run_study(plan, [], RunControl).status == "finished"
    ashem, matched = study_runs(plan)
    spent = read(ashem.run_dir / "summary.json")["training_macs"]["total"]
    settings = read(matched.run_dir / "settings.json")
    assert settings["run"]["training_macs_budget"] == spent
    assert settings["run"]["training_macs_budget_from"] == "a"
    trained = read(matched.run_dir / "summary.json")["training_macs"]["total"]
    events = [json.loads(line) for line in (matched.run_dir / "events.jsonl").open()]
    started = next(e for e in events if e["kind"] == "StageStarted")
    first_epoch = next(e for e in events if e["kind"] == "EpochEnded")
    one_step = first_epoch["training_macs"] / started["batches"]  # every step alike (plain)
    assert spent <= trained < spent + one_step * (1 + 1e-9)
    ended = next(e for e in events if e["kind"] == "StageEnded")
    assert ended["stopped_by"] == "budget"


def test_the_source_must_come_before_in_the_study(tmp_path):
    data = write_corpus(tmp_path / "data", synthetic_splits())
    a = write_tiny_toml(tmp_path / "a.toml", data)
    b = tmp_path / "b.toml"
    b.write_text(plain_four_layers(a.read_text(), "a"))
    with pytest.raises(StudyError, match="must name a configuration given before it"):
        plan_study([str(b), str(a)], 1, QUICK, str(tmp_path / "s"))
    c = tmp_path / "c.toml"
    c.write_text(plain_four_layers(a.read_text(), "nobody"))
    with pytest.raises(StudyError, match="'nobody'"):
        plan_study([str(a), str(c)], 1, QUICK, str(tmp_path / "t"))


def test_outside_a_study_the_source_alone_is_refused_in_one_line(tmp_path):
    settings = tiny_settings(tmp_path, "run.training_macs_budget_from=a")
    result = run_ashem(settings)
    assert result.status == "failed" and result.run_dir is None
    assert result.error.error_kind == "settings" and "outside a study" in result.error.message
    assert "\n" not in result.error.message


def test_a_study_override_never_adds_a_stage_to_a_configuration(tmp_path):
    data = write_corpus(tmp_path / "data", synthetic_splits())
    a = write_tiny_toml(tmp_path / "a.toml", data)
    b = tmp_path / "b.toml"
    b.write_text(plain_four_layers(a.read_text(), "a"))  # one stage
    with pytest.raises(StudyError, match="would add stage 2 to its 1 stage"):
        plan_study([str(a), str(b)], 1, ["stages.2.max_epochs=1"], str(tmp_path / "s"))
    plan_study([str(a), str(b)], 1, ["stages.1.max_epochs=1"], str(tmp_path / "t"))
