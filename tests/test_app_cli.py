"""`ashem` command line: bad input is one line on stderr and exit code 2, before anything
starts."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ashem_app.__main__ import build_parser, main

ROOT = Path(__file__).resolve().parents[1]


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


def test_bad_setting_value(capsys, tmp_path):
    assert main(["--settings", str(ROOT / "settings.toml"), "--set", "run.seed=oops"]) == 2
    err = one_line_error(capsys)
    assert err.startswith("ashem: settings:") and "run.seed" in err


def test_unknown_table_and_malformed_override(capsys):
    assert main(["--settings", str(ROOT / "settings.toml"), "--set", "nope.key=1"]) == 2
    assert "nope" in one_line_error(capsys)
    assert main(["--settings", str(ROOT / "settings.toml"), "--set", "justakey"]) == 2
    assert "justakey" in one_line_error(capsys)


def test_missing_settings_file(capsys, tmp_path):
    assert main(["--settings", str(tmp_path / "absent.toml")]) == 2
    assert "absent.toml" in one_line_error(capsys)


def test_argparse_errors_are_one_line(capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["--no-such-flag"])
    assert exit_info.value.code == 2
    assert "--no-such-flag" in one_line_error(capsys)


def test_replay_errors(capsys, tmp_path):
    assert main(["--replay", str(tmp_path / "nothing")]) == 2
    assert "no events file" in one_line_error(capsys)
    assert main(["--replay", str(tmp_path), "--paused"]) == 2
    one_line_error(capsys)


def test_module_entry_point_exit_code(tmp_path):
    """`python -m ashem_app` with bad settings: exit 2, one line, no traceback."""
    proc = subprocess.run([sys.executable, "-m", "ashem_app", "--settings",
                           str(tmp_path / "none.toml")], capture_output=True, text=True,
                          cwd=ROOT, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert proc.stdout == ""
