"""The headless command line (`python -m ashem_engine`) and the engine's import hygiene, each
in a fresh interpreter."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from synthetic import synthetic_splits, write_corpus
from tiny import TINY, sets

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "settings.toml"


def env() -> dict:
    e = dict(os.environ)
    e.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", PYTHONUNBUFFERED="1",
             OMP_NUM_THREADS="1")  # a busy 2-core machine: no spinning second thread
    e.pop("ASHEM_DATA", None)
    return e


def cli(cwd: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ashem_engine", *args], cwd=cwd, env=env(),
                          capture_output=True, text=True, timeout=timeout)


def tiny_args(tmp_path: Path, *extra: str) -> list[str]:
    data = write_corpus(tmp_path / "data", synthetic_splits())
    return ["run", "--settings", str(SHIPPED),
            *sets(*TINY, f"data.path={data}", "run.runs_dir=runs", *extra)]


def single_error_line(p: subprocess.CompletedProcess) -> str:
    assert p.returncode == 2, (p.returncode, p.stdout, p.stderr)
    assert "Traceback" not in p.stderr
    lines = p.stderr.splitlines()
    assert len(lines) == 1, p.stderr
    assert lines[0].startswith("ashem-engine") and ": error: " in lines[0]
    return lines[0]


# -- bad input: exit 2, one line on stderr ----------------------------------------------------

def test_bad_settings_value(tmp_path):
    p = cli(tmp_path, "run", "--settings", str(SHIPPED), "--set", "data.batch_size=0")
    line = single_error_line(p)
    assert "data.batch_size" in line and "0" in line
    assert p.stdout == ""


def test_unknown_settings_key(tmp_path):
    line = single_error_line(cli(tmp_path, "run", "--settings", str(SHIPPED),
                                 "--set", "model.depth=4"))
    assert "model.depth" in line


def test_without_settings_file_the_defaults_run_and_it_says_so(tmp_path):
    data = write_corpus(tmp_path / "data", synthetic_splits())
    p = cli(tmp_path, "run", "--quiet", *sets(*TINY, f"data.path={data}", "run.runs_dir=runs",
                                              "stages.1.max_epochs=1", "stages.2.max_epochs=1"))
    assert p.returncode == 0, p.stderr
    assert p.stderr.count("\n") == 1 and "built-in defaults" in p.stderr
    settings = json.loads(next((tmp_path / "runs").glob("*/settings.json")).read_text())
    assert settings["optimizer"] == {"weight_decay": 0.01, "grad_clip": 1.0,  # not from a file
                                     "schedule": "constant", "warmup_steps": 0,
                                     "decay_epochs": 0, "min_lr_ratio": 0.0}


def test_init_writes_settings_toml_once(tmp_path):
    first = cli(tmp_path, "init")
    assert first.returncode == 0 and "settings.toml" in first.stdout
    assert (tmp_path / "settings.toml").read_text() == SHIPPED.read_text()
    (tmp_path / "settings.toml").write_text("# edited\n")
    again = single_error_line(cli(tmp_path, "init"))
    assert "already exists" in again
    assert (tmp_path / "settings.toml").read_text() == "# edited\n"


@pytest.mark.parametrize("args", [("run", "--bogus"), ("--bogus",), ("run", "--set"),
                                  ("launch",)])
def test_unknown_option_or_command(tmp_path, args):
    line = single_error_line(cli(tmp_path, *args))
    assert "--help" in line


def test_no_command_shows_help_and_exits_2(tmp_path):
    p = cli(tmp_path)
    assert p.returncode == 2 and "run" in p.stderr and "Traceback" not in p.stderr


def test_missing_data_directory(tmp_path):
    p = cli(tmp_path, "run", "--settings", str(SHIPPED),
            *sets(*TINY, f"data.path={tmp_path / 'no-data'}", "run.runs_dir=runs"))
    line = single_error_line(p)
    assert "data.path" in line and "no-data" in line


# -- a whole tiny run -------------------------------------------------------------------------

def test_tiny_run_prints_progress_and_the_comparison_table(tmp_path):
    p = cli(tmp_path, *tiny_args(tmp_path, "stages.1.max_epochs=1", "stages.2.max_epochs=1"))
    assert p.returncode == 0, p.stderr
    assert "Traceback" not in p.stderr
    out = p.stdout
    for text in ("Stage 1:", "Epoch 1", "Val PPL:", "Threshold:", "Hard examples:", "Stage 2:",
                 "Final evaluation", "spec (L4)", "ref (CPU)", "this run", "Finished in"):
        assert text in out, text
    assert out.index("Threshold:") < out.index("Hard examples:") < out.index("Final evaluation")
    runs = list((tmp_path / "runs").iterdir())
    assert len(runs) == 1 and (runs[0] / "summary.json").is_file()
    assert str(runs[0].name) in out


def interrupted_at_first_epoch(args: list, cwd: Path) -> tuple[int, str, str]:
    """`python -m ashem_engine ARGS`, sent Ctrl-C (SIGINT) once it has printed its first
    epoch line: (exit code, stdout after that line, stderr)."""
    proc = subprocess.Popen([sys.executable, "-m", "ashem_engine", *args], cwd=cwd,
                            env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    watchdog = threading.Timer(120, proc.kill)  # a hung run must not hang the suite
    watchdog.start()
    try:
        for line in proc.stdout:
            if line.startswith("Epoch 1"):
                break
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        watchdog.cancel()
        if proc.poll() is None:
            proc.kill()
    return proc.returncode, out, err


def test_ctrl_c_cancels_cleanly(tmp_path):
    args = tiny_args(tmp_path, "stages.1.max_epochs=50", "stages.1.patience=50",
                     "run.progress_events_per_epoch=1")
    code, out, err = interrupted_at_first_epoch(args, tmp_path)
    assert code == 130, err
    assert "Cancelled at stage 1" in out and "Traceback" not in err
    run_dir = next((tmp_path / "runs").iterdir())
    assert (run_dir / "stage-1-best.pt").is_file()


# -- import hygiene -----------------------------------------------------------------------------

def test_engine_never_imports_textual(tmp_path):
    data = write_corpus(tmp_path / "data", synthetic_splits())
    script = textwrap.dedent(f"""
        import importlib, pkgutil, sys
        import ashem_engine
        names = [m.name for m in pkgutil.iter_modules(ashem_engine.__path__)]
        for name in names:
            importlib.import_module("ashem_engine." + name)
        from ashem_engine.settings import load_settings
        from ashem_engine.run import run_ashem
        overrides = {list(TINY)!r} + ["data.path={data}", "run.runs_dir={tmp_path / 'runs'}",
                                      "stages.1.max_epochs=1", "stages.2.max_epochs=1"]
        result = run_ashem(load_settings(None, overrides))
        assert result.status == "finished", result.error
        bad = sorted(m for m in sys.modules
                     if m.split(".")[0] in ("textual", "ashem_app", "plotext", "rich"))
        print("MODULES", sorted(names))
        print("BAD", bad)
    """)
    p = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env(),
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert "BAD []" in p.stdout, p.stdout
    for module in ("settings", "data", "model", "head", "mining", "cascade", "stages", "run",
                   "control", "events", "rundir", "reference", "__main__", "costs",
                   "names", "signals", "sweep", "compare"):
        assert f"'{module}'" in p.stdout


# -- one exit-code rule -----------------------------------------------------------------------

@pytest.mark.parametrize("status, kind, code", [
    ("finished", None, 0), ("failed", "numeric", 1), ("failed", "internal", 1),
    ("failed", "data", 2), ("failed", "checkpoint", 2), ("failed", "run_dir", 2),
    ("failed", "resume", 2), ("cancelled", None, 130)])
def test_one_exit_code_rule_for_both_commands(status, kind, code):
    from ashem_engine.exitcodes import exit_code

    assert exit_code(status, kind) == code


def test_the_docs_state_the_same_exit_code_rule():
    rule = ("0 finished, 1 failed while running, 2 bad input (command line, settings, data, "
            "run directory, checkpoint), 130 cancelled")
    for doc in (REPO / "README.md", REPO / "docs" / "APP.md"):
        text = " ".join(doc.read_text().split())
        assert rule in text, doc


def test_a_bad_scale_setting_is_one_line_and_exit_code_2(tmp_path):
    line = single_error_line(cli(tmp_path, "run", "--set", "data.vocab_size=-1"))
    assert "data.vocab_size = -1: must be 0 (no cap) or >= 3" in line


def test_the_reference_table_gives_bands_only_to_the_spec_set_up():
    from ashem_engine.reference import departures, format_table
    from ashem_engine.settings import load_settings

    def summary(*overrides):
        settings = load_settings(None, list(overrides)).to_dict()
        return {"settings": settings, "stages": [{"stage": 1, "best_val_ppl": 2000.0}],
                "mining": [], "final": {}, "seconds": 1.0}
    spec = summary("data.path=/elsewhere", "run.precision=bf16", "evaluation.sweep_points=0")
    assert departures(spec["settings"]) == []
    assert "OUT" in format_table(spec)  # 2000 is outside stage 1's band
    sound = summary("mining.split=train", "stages.2.freeze_head=true", "model.dim=128")
    assert departures(sound["settings"]) == ["model.dim", "mining.split", "stages.2.freeze_head"]
    table = format_table(sound)
    assert "OUT" not in table and "in band" not in table
    assert "not the spec's set-up: model.dim, mining.split, stages.2.freeze_head" in table
