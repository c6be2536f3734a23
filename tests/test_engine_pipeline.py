"""The pipeline of named steps: run directories written before the change still resume, and
summary.json is a reduction of the run's events."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from ashem_engine.run import resume_ashem, run_ashem
from conftest import tiny_corpus, tiny_settings
from engine_support import single_thread  # noqa: F401  (autouse fixture)
from test_engine_resume import final_numbers

# Cancelled tiny runs ("stages.2.max_epochs=4") recorded by the code before the pipeline
# refactor (commit bc56829): their progress.pt files have the old untyped layout.
OLD_RUNS = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("full")
    settings = tiny_settings(tmp, "stages.2.max_epochs=4")
    result = run_ashem(settings, [], corpus=tiny_corpus(settings))
    assert result.status == "finished"
    return settings, result


@pytest.mark.parametrize("name", ["old-run-stage2-epoch1", "old-run-after-stage1"])
def test_run_dirs_from_before_the_refactor_resume(uninterrupted, name, tmp_path):
    settings, whole = uninterrupted
    run_dir = tmp_path / name
    shutil.copytree(OLD_RUNS / name, run_dir)
    result = resume_ashem(run_dir, [], corpus=tiny_corpus(settings))
    assert result.status == "finished", result.error
    assert final_numbers(result.summary) == final_numbers(whole.summary)
