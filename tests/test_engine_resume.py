"""Reliability: resume after cancel or kill -9, crash-safe files, numeric faults, bad input."""
from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from ashem_engine import events as ev
from ashem_engine.control import RunControl
from ashem_engine.rundir import CheckpointError, load_checkpoint
from ashem_engine.run import resume_ashem, run_ashem
from ashem_engine.stages import SequenceTask
from tiny import tiny_corpus, tiny_settings

ROOT = Path(__file__).resolve().parents[1]


def final_numbers(summary: dict) -> dict:
    stages = [{k: s[k] for k in ("epochs", "best_epoch", "best_val_ppl", "best_val_acc",
                                 "best_hard_ppl")} for s in summary["stages"]]
    return {"stages": stages, "mining": summary["mining"], "final": summary["final"]}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("full")
    settings = tiny_settings(tmp, "stages.2.max_epochs=4")
    result = run_ashem(settings, [], corpus=tiny_corpus(settings))
    assert result.status == "finished"
    return settings, final_numbers(result.summary)


def cancel_when(control: RunControl, predicate):
    def sink(event):
        if predicate(event):
            control.cancel()
    return sink


@pytest.mark.parametrize("where", ["stage1-epoch2", "stage2-epoch1", "after-stage1",
                                   "after-mining"])
def test_resume_after_cancel_reaches_the_same_numbers(uninterrupted, where):
    settings, expected = uninterrupted
    predicates = {
        "stage1-epoch2": lambda e: isinstance(e, ev.EpochEnded) and (e.stage, e.epoch) == (1, 2),
        "stage2-epoch1": lambda e: isinstance(e, ev.EpochEnded) and (e.stage, e.epoch) == (2, 1),
        "after-stage1": lambda e: isinstance(e, ev.StageEnded) and e.stage == 1,
        "after-mining": lambda e: isinstance(e, ev.HardExamplesCollected),
    }
    control = RunControl()
    first = run_ashem(settings, [cancel_when(control, predicates[where])], control,
                      corpus=tiny_corpus(settings))
    assert first.status == "cancelled"
    events = []
    second = resume_ashem(first.run_dir, [events.append], corpus=tiny_corpus(settings))
    assert second.status == "finished", second.error
    assert second.run_dir == first.run_dir
    assert final_numbers(second.summary) == expected
    assert events[0].kind == "RunStarted" and events[0].resumed


def test_resume_after_kill_9_mid_epoch(uninterrupted, tmp_path):
    """A real process killed with SIGKILL in the middle of a stage-2 epoch, then resumed."""
    settings, expected = uninterrupted
    data_dir = Path(settings.data.path)
    runs = tmp_path / "runs"
    script = textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {str(ROOT / 'tests')!r})
        from ashem_engine import events as ev
        from ashem_engine.run import run_ashem
        from tiny import tiny_settings, tiny_corpus
        from pathlib import Path
        s = tiny_settings(Path({str(tmp_path)!r}), "stages.2.max_epochs=4")
        def killer(e):
            if isinstance(e, ev.BatchProgress) and (e.stage, e.epoch) == (2, 2) \\
                    and e.batch > e.batches // 2:
                os.kill(os.getpid(), signal.SIGKILL)
        run_ashem(s, [killer], corpus=tiny_corpus(s))
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL
    (run_dir,) = list(runs.iterdir())
    # What a kill leaves is readable: events (maybe torn), checkpoints, progress.
    kinds = [e.kind for e in ev.read_events(run_dir / "events.jsonl")]
    assert kinds.count("EpochEnded") >= 4 and "RunFinished" not in kinds
    assert load_checkpoint(run_dir / "stage-1-best.pt")["stage"] == 1
    assert not list(run_dir.glob(".*.tmp"))
    result = resume_ashem(run_dir, [], corpus=tiny_corpus(settings))
    assert result.status == "finished", result.error
    assert final_numbers(result.summary) == expected
    assert data_dir.exists()


def test_torn_last_event_line_is_skipped(tmp_path):
    path = tmp_path / "events.jsonl"
    good = ev.Log(level="info", message="hello")
    path.write_text(json.dumps(good.to_dict()) + "\n" + '{"kind": "Log", "lev')
    events = ev.read_events(path)
    assert [e.message for e in events] == ["hello"]


def test_nan_loss_stops_with_a_numeric_failure_and_keeps_the_best(tmp_path, monkeypatch):
    settings = tiny_settings(tmp_path)
    real_loss = SequenceTask.loss
    calls = {"n": 0}

    def poisoned(self, index):
        calls["n"] += 1
        loss = real_loss(self, index)
        epoch_two = calls["n"] > self.num_batches() + 5
        return loss * float("nan") if epoch_two else loss

    monkeypatch.setattr(SequenceTask, "loss", poisoned)
    events = []
    result = run_ashem(settings, [events.append], corpus=tiny_corpus(settings))
    assert result.status == "failed"
    failure = events[-1]
    assert failure.kind == "RunFailed" and failure.error_kind == "numeric"
    assert "stage 1, epoch 2, batch 6" in failure.message
    assert failure.where == "stage 1, epoch 2, batch 6"
    best = load_checkpoint(result.run_dir / "stage-1-best.pt")
    assert best["best_epoch"] == 1
    assert json.loads((result.run_dir / "summary.json").read_text())["status"] == "failed"


def test_checkpoint_that_would_run_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))

    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"model": Evil()}, f)
    assert_refused(path)
    assert not (tmp_path / "pwned").exists()


def assert_refused(path):
    """One line naming the file as unreadable; never torch's advice to load it unsafely."""
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert "not a readable ashem checkpoint" in message and str(path) in message
    assert "weights_only" not in message and "\n" not in message


def test_truncated_checkpoint_is_refused(tmp_path):
    path = tmp_path / "cut.pt"
    torch.save({"model": {"w": torch.zeros(1000)}}, path)
    path.write_bytes(path.read_bytes()[:500])
    assert_refused(path)


@pytest.mark.parametrize("content", [b"", b"garbage" * 100, b"PK\x03\x04broken"])
def test_corrupt_checkpoint_is_refused(tmp_path, content):
    path = tmp_path / "progress.pt"
    path.write_bytes(content)
    assert_refused(path)


def test_foreign_checkpoint_is_refused(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(2)}, path)  # a checkpoint, but not ashem's
    assert_refused(path)


def cancelled_after_stage_one(settings):
    control = RunControl()
    return run_ashem(settings, [cancel_when(
        control, lambda e: isinstance(e, ev.StageEnded) and e.stage == 1)], control,
        corpus=tiny_corpus(settings))


def test_resume_with_wrong_shape_checkpoint_fails_cleanly(uninterrupted, tmp_path):
    settings, _ = uninterrupted
    first = cancelled_after_stage_one(settings)
    best = first.run_dir / "stage-1-best.pt"
    torch.save({"model": {"embedding.weight": torch.zeros(3, 3)}}, best)
    before = sorted(p.name for p in first.run_dir.iterdir())
    result = resume_ashem(first.run_dir, [], corpus=tiny_corpus(settings))
    assert result.status == "failed" and result.error.error_kind == "checkpoint"
    assert "does not fit" in result.error.message
    assert sorted(p.name for p in first.run_dir.iterdir()) == before  # nothing lost


def test_resume_cli_bad_inputs(tmp_path):
    def cli(*args):
        return subprocess.run([sys.executable, "-m", "ashem_engine", *args],
                              capture_output=True, text=True, cwd=tmp_path, timeout=60)

    missing = cli("resume", str(tmp_path / "nope"))
    assert missing.returncode == 2
    assert missing.stderr.count("\n") == 1 and "does not exist" in missing.stderr
    (tmp_path / "notarun").mkdir()
    notrun = cli("resume", str(tmp_path / "notarun"))
    assert notrun.returncode == 2 and "settings.json" in notrun.stderr
    unknown = cli("resume", "--frobnicate", "x")
    assert unknown.returncode == 2 and "Traceback" not in unknown.stderr


def test_resume_of_a_corrupt_progress_file_is_one_line(uninterrupted, tmp_path):
    settings, _ = uninterrupted
    first = cancelled_after_stage_one(settings)
    (first.run_dir / "progress.pt").write_bytes(b"not a checkpoint")
    before = {p.name: p.read_bytes() for p in first.run_dir.iterdir()}
    proc = subprocess.run([sys.executable, "-m", "ashem_engine", "resume", str(first.run_dir)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and "not a readable ashem checkpoint" in proc.stderr
    assert "weights_only" not in proc.stderr and "Traceback" not in proc.stderr
    assert {p.name: p.read_bytes() for p in first.run_dir.iterdir()} == before  # nothing lost


def test_finished_run_is_not_resumed(uninterrupted, tmp_path):
    settings = tiny_settings(tmp_path)
    done = run_ashem(settings, [], corpus=tiny_corpus(settings))
    result = resume_ashem(done.run_dir, [])
    assert result.status == "failed" and "already finished" in result.error.message


def test_unwritable_runs_dir_is_reported_before_training(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    settings = tiny_settings(tmp_path, f"run.runs_dir={blocker / 'runs'}")
    events = []
    result = run_ashem(settings, [events.append], corpus=tiny_corpus(settings))
    assert result.status == "failed" and result.error.error_kind == "run_dir"
    assert [e.kind for e in events] == ["RunFailed"]
    assert blocker.read_text() == "not a directory"


def test_full_disk_is_reported_before_training(tmp_path, monkeypatch):
    import ashem_engine.rundir as rundir

    class Tiny:
        f_bavail, f_frsize = 10, 4096  # 40 KB free

    monkeypatch.setattr(rundir.os, "statvfs", lambda path: Tiny())
    settings = tiny_settings(tmp_path)
    events = []
    result = run_ashem(settings, [events.append], corpus=tiny_corpus(settings))
    assert result.status == "failed" and result.error.error_kind == "run_dir"
    assert "MiB free" in result.error.message
    assert [e.kind for e in events] == ["RunFailed"]


def test_app_resume_bad_run_dir_is_one_line_exit_2(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "ashem_app", "--resume", str(tmp_path / "no")],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "does not exist" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_resume_in_the_sequence_context_reaches_the_same_numbers(tmp_path):
    """The sequence context rebuilds its frozen lower states from the saved hard tokens."""
    settings = tiny_settings(tmp_path, "stages.2.max_epochs=3", "stages.2.context=sequence",
                             "evaluation.inference=as_trained", "mining.split=train",
                             "evaluation.sweep_points=0")
    whole = run_ashem(settings, [], corpus=tiny_corpus(settings))
    assert whole.status == "finished"
    control = RunControl()
    first = run_ashem(settings, [cancel_when(control, lambda e: isinstance(e, ev.EpochEnded)
                                             and (e.stage, e.epoch) == (2, 1))], control,
                      corpus=tiny_corpus(settings))
    assert first.status == "cancelled"
    second = resume_ashem(first.run_dir, [], corpus=tiny_corpus(settings))
    assert second.status == "finished", second.error
    assert final_numbers(second.summary) == final_numbers(whole.summary)
    assert not (second.run_dir / "sweep.json").exists()  # sweep_points = 0: no sweep
