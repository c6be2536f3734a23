"""TensorBoard (ashem_engine/tensorboard.py): the live logger (`run.loggers = ["tensorboard"]`)
and `ashem-engine export RUN_DIR --tensorboard LOGDIR` write every figure of the events as
scalars, read back here from the event files; without the package, one line saying what to
install, exit 2."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ashem_engine import events as ev
from ashem_engine.__main__ import main
from ashem_engine.control import RunControl
from ashem_engine.run import resume_ashem, run_ashem
from ashem_engine.settings import SettingsError, load_settings
from ashem_engine.sinks import JsonLinesSink
from ashem_engine.tensorboard import TensorBoardError, export
from engine_support import single_thread  # noqa: F401  (autouse fixture)
from tiny import tiny_corpus, tiny_settings

ROOT = Path(__file__).resolve().parents[1]
HINT = 'pip install "ashem[tensorboard]"'
# The figures of an epoch (EpochEnded's number fields), each at stage<N>/<field>.
EPOCH_FIGURES = ("train_ppl", "val_ppl", "val_acc", "hard_ppl", "shallow_ratio", "training_macs",
                 "selection_macs", "run_training_macs", "tokens_trained", "best_val_ppl",
                 "best_epoch", "patience_counter", "patience", "seconds", "run_seconds")


def read_scalars(logdir: Path) -> dict[str, list[tuple[int, float, float]]]:
    """tag -> [(step, value, wall time)] over every event file in `logdir`."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    found: dict[str, list] = {}
    for path in sorted(logdir.glob("events.out.tfevents.*")):
        reader = EventAccumulator(str(path), size_guidance={"scalars": 0})
        reader.Reload()
        for tag in reader.Tags()["scalars"]:
            found.setdefault(tag, []).extend(
                (s.step, s.value, s.wall_time) for s in reader.Scalars(tag))
    return found


def points(scalars: dict) -> set[tuple[str, int, float]]:
    return {(tag, step, value) for tag, rows in scalars.items() for step, value, _ in rows}


def f32(value) -> float:
    return float(np.float32(value))


def of(events: list, cls) -> list:
    return [e for e in events if isinstance(e, cls)]


@pytest.fixture(scope="module")
def logged_run(tmp_path_factory):
    """A tiny run with the live logger, cancelled after stage 2's first epoch and resumed:
    its run directory, its whole events.jsonl and the scalars of RUN_DIR/tensorboard."""
    pytest.importorskip("tensorboard")
    tmp = tmp_path_factory.mktemp("tensorboard")
    settings = tiny_settings(tmp, "stages.1.max_epochs=2", "stages.2.max_epochs=2",
                             "run.loggers=['tensorboard']")
    control = RunControl()

    def cancel_after_stage_2_epoch_1(e: ev.Event) -> None:
        if isinstance(e, ev.EpochEnded) and (e.stage, e.epoch) == (2, 1):
            control.cancel()
    threads = torch.get_num_threads()
    try:
        first = run_ashem(settings, [cancel_after_stage_2_epoch_1], control,
                          tiny_corpus(settings))
        assert first.status == "cancelled", first.error
        second = resume_ashem(first.run_dir, [], corpus=tiny_corpus(settings))
        assert second.status == "finished", second.error
    finally:
        torch.set_num_threads(threads)
    run_dir = first.run_dir
    return run_dir, ev.read_events(run_dir / "events.jsonl"), read_scalars(run_dir / "tensorboard")


def epoch_steps(events: list) -> dict[tuple[int, int], int]:
    """(stage, epoch) -> the epochs the run finished up to it, over its stages."""
    stage_epochs = {e.stage: e.epochs for e in of(events, ev.StageEnded)}
    return {(e.stage, e.epoch): e.epoch + sum(n for s, n in stage_epochs.items() if s < e.stage)
            for e in of(events, ev.EpochEnded)}


def test_the_live_logger_writes_every_epoch_figure_with_the_stage_in_the_tag(logged_run):
    run_dir, events, scalars = logged_run
    epochs, steps = of(events, ev.EpochEnded), epoch_steps(events)
    assert len(of(events, ev.RunStarted)) == 2  # two attempts, an event file each
    assert len(list((run_dir / "tensorboard").iterdir())) == 2
    assert sorted(steps.values()) == list(range(1, len(epochs) + 1))  # over stages and attempts
    for e in epochs:
        step = steps[(e.stage, e.epoch)]
        figures = {name: getattr(e, name) for name in EPOCH_FIGURES}
        figures.update({f"memory/{peak}": v for peak, v in (e.memory or {}).items()})
        for name, value in figures.items():
            if value is not None:
                rows = scalars[f"stage{e.stage}/{name}"]
                assert (step, f32(value)) in [row[:2] for row in rows], name
    for stage in {e.stage for e in epochs}:
        assert len(scalars[f"stage{stage}/val_ppl"]) == sum(e.stage == stage for e in epochs)
    assert "stage1/hard_ppl" not in scalars and len(scalars["stage2/hard_ppl"]) == 2  # None: none
    assert scalars["stage2/train_ppl"][-1][:2] == (4, f32(epochs[-1].train_ppl))


def test_mining_the_stages_ends_and_the_final_report_are_scalars(logged_run):
    _, events, scalars = logged_run
    (threshold,), (hard,) = of(events, ev.ThresholdComputed), of(events, ev.HardExamplesCollected)
    (final,) = of(events, ev.Evaluated)
    ended = {e.stage: e for e in of(events, ev.StageEnded)}
    after_stage_1, last = ended[1].epochs, ended[1].epochs + ended[2].epochs
    expected = {
        "stage1/mining/threshold": (after_stage_1, threshold.threshold),
        "stage1/mining/tokens": (after_stage_1, threshold.tokens),
        "stage1/mining/count": (after_stage_1, hard.count),
        "stage1/mining/ratio": (after_stage_1, hard.ratio),
        "stage1/mining/mean_confidence": (after_stage_1, hard.mean_confidence),
        "stage1/mining/hard_ppl": (after_stage_1, hard.hard_ppl),
        "stage1/result/best_val_ppl": (after_stage_1, ended[1].best_val_ppl),
        "stage2/result/training_macs": (last, ended[2].training_macs),
        "stage2/result/best_hard_ppl": (last, ended[2].best_hard_ppl),
        f"final/{final.split}/accuracy": (last, final.accuracy),
        f"final/{final.split}/ppl": (last, final.ppl),
        f"final/{final.split}/honest_cost": (last, final.honest_cost),
        f"final/{final.split}/compute_cost": (last, final.compute_cost),
        f"final/{final.split}/macs_per_token": (last, final.macs_per_token),
    }
    for layer, ratio in zip(final.exit_layers, final.exit_ratios):
        expected[f"final/{final.split}/exit_ratio/layer{layer}"] = (last, ratio)
    for tag, (step, value) in expected.items():
        assert [row[:2] for row in scalars[tag]] == [(step, f32(value))], tag


def test_the_export_writes_what_the_live_logger_wrote(logged_run, tmp_path, capsys):
    run_dir, events, live = logged_run
    logdir = tmp_path / "exported"
    assert main(["export", str(run_dir), "--tensorboard", str(logdir)]) == 0
    (line,) = capsys.readouterr().out.splitlines()
    assert line.startswith("wrote ") and str(logdir) in line
    (written,) = logdir.iterdir()  # one file, nothing left beside it
    assert written.name.startswith("events.out.tfevents.")
    exported = read_scalars(logdir)
    assert points(exported) == points(live) and len(points(live)) > 50
    # one anchor for the whole run: wall times are apart by the run clock, over both attempts
    clock, before = [], 0.0
    for e in events:
        before = e.seconds_before if isinstance(e, ev.RunStarted) else before
        if isinstance(e, ev.EpochEnded):
            clock.append(before + e.t)
    walls = [row[2] for row in sorted(exported["stage1/val_ppl"] + exported["stage2/val_ppl"])]
    assert len(clock) == 4 and before > 0
    assert np.allclose(np.diff(walls), np.diff(clock), atol=1e-3)


def test_machine_samples_are_scalars_at_the_run_clock_seconds(tmp_path):
    pytest.importorskip("tensorboard")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    log = JsonLinesSink(run_dir / "events.jsonl")
    log(ev.RunStarted("m", str(run_dir), "cuda", 1, {}, 10, 1, 1, 1, [], resumed=True,
                      seconds_before=100.0, t=0.0))
    device = {"index": 1, "allocated_bytes": 2048, "reserved_bytes": 4096,
              "peak_allocated_bytes": 3072, "utilization": 87.0}
    for t, cpu in ((2.5, 150.0), (7.9, 90.0)):
        log(ev.MachineSampled(cpu_percent=cpu, rss_bytes=1 << 30, peak_rss_bytes=3 << 29,
                              threads=5, system_memory_percent=40.0, devices=[device],
                              stage=2, t=t))
    log.close()
    export(run_dir, tmp_path / "tb")
    scalars = read_scalars(tmp_path / "tb")
    assert [row[:2] for row in scalars["machine/cpu_percent"]] == [(102, 150.0), (107, 90.0)]
    assert scalars["machine/peak_rss_bytes"][0][:2] == (102, float(3 << 29))
    assert scalars["machine/cuda1/allocated_bytes"][1][:2] == (107, 2048.0)
    assert scalars["machine/cuda1/utilization"][0][:2] == (102, 87.0)
    assert not [tag for tag in scalars if tag.endswith(("/stage", "/index", "system_cpu_percent"))]


# -- bad input, and no tensorboard package ----------------------------------------------------

def one_line(text: str) -> str:
    (line,) = text.strip().splitlines()
    return line


def test_a_bad_run_directory_is_one_line_and_exit_2(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    logdir = tmp_path / "tb"
    for run_dir, why in ((tmp_path / "missing", "no such directory"),
                         (tmp_path / "empty", "no events.jsonl")):
        assert main(["export", str(run_dir), "--tensorboard", str(logdir)]) == 2
        line = one_line(capsys.readouterr().err)
        assert line.startswith("ashem-engine: error: export:") and why in line
    with pytest.raises(SystemExit, match="2"):  # --tensorboard is required
        main(["export", str(tmp_path / "empty")])
    assert "--tensorboard" in one_line(capsys.readouterr().err)
    assert not logdir.exists()


def test_an_unknown_logger_is_a_settings_error(tmp_path, capsys):
    with pytest.raises(SettingsError, match=r"run.loggers = \['wandb'\]: .*: tensorboard$"):
        load_settings(None, ["run.loggers=['wandb']"])
    with pytest.raises(SettingsError, match="without repeats"):
        load_settings(None, ["run.loggers=['tensorboard', 'tensorboard']"])
    runs = tmp_path / "runs"
    assert main(["run", "--set", "run.loggers=['wandb']", "--set", f"run.runs_dir={runs}"]) == 2
    assert "run.loggers" in one_line(capsys.readouterr().err) and not runs.exists()


def test_without_the_package_what_to_install_is_said_in_one_line(tmp_path, monkeypatch):
    for name in [name for name in sys.modules if name.startswith("tensorboard.")]:
        monkeypatch.delitem(sys.modules, name)  # (imported by the tests before)
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # as if not installed
    with pytest.raises(SettingsError) as refused:
        load_settings(None, ["run.loggers=['tensorboard']"])
    assert HINT in one_line(str(refused.value)) and "run.loggers" in str(refused.value)
    assert load_settings(None).run.loggers == ()  # no logger, no package needed
    (tmp_path / "events.jsonl").write_text("")
    with pytest.raises(TensorBoardError, match=HINT.replace("[", r"\[").replace("]", r"\]")):
        export(tmp_path, tmp_path / "tb")


# The commands in a process where tensorboard cannot be imported.
WITHOUT = ("import sys; sys.modules['tensorboard'] = None; import ashem_engine.tensorboard; "
           "from ashem_engine.__main__ import main; sys.exit(main(sys.argv[1:]))")


@pytest.mark.parametrize("command", ["run", "export"])
def test_without_the_package_the_commands_exit_2(tmp_path, command):
    runs, logdir, run_dir = tmp_path / "runs", tmp_path / "tb", tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "events.jsonl").write_text(json.dumps(ev.Log("info", "x").to_dict()) + "\n")
    args = {"run": ["run", "--set", "run.loggers=['tensorboard']",
                    "--set", f"run.runs_dir={runs}"],
            "export": ["export", str(run_dir), "--tensorboard", str(logdir)]}[command]
    done = subprocess.run([sys.executable, "-c", WITHOUT, *args], cwd=tmp_path, text=True,
                          capture_output=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 2, done.stderr
    assert HINT in one_line(done.stderr) and done.stdout == ""
    assert not runs.exists() and not logdir.exists()
