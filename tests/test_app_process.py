"""The real `python -m ashem_app` in a pseudo-terminal: quitting a held run (confirm, cancel)
ends the process within 2 s — no thread left hanging. The engine is held (`--paused`), so
no training runs while keys are sent."""
from __future__ import annotations

import fcntl
import os
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest
from tiny import sets, tiny_overrides

ROOT = Path(__file__).resolve().parents[1]


class Terminal:
    def __init__(self, argv: list[str], cwd: Path, size=(100, 30)):
        self.master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", size[1], size[0], 0, 0))
        env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": str(size[0]),
               "LINES": str(size[1])}
        self.proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, cwd=cwd,
                                     env=env, start_new_session=True)
        os.close(slave)
        self.seen = b""

    def read(self, timeout: float) -> None:
        ready, _, _ = select.select([self.master], [], [], timeout)
        if ready:
            try:
                self.seen += os.read(self.master, 65536)
            except OSError:  # the child has gone
                pass

    def wait_for(self, text: bytes, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.seen:
            assert time.monotonic() < deadline, f"{text!r} never appeared"
            assert self.proc.poll() is None, self.seen[-2000:]
            self.read(0.1)

    def send(self, keys: str) -> None:
        os.write(self.master, keys.encode())

    def close(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        os.close(self.master)


@pytest.mark.skipif(sys.platform != "linux", reason="pty")
@pytest.mark.parametrize("settings_file", ["given", "none here"])
def test_quit_a_held_run_ends_the_process_within_2_s(tmp_path, settings_file):
    """Quitting cancels the run: exit code 130, as `ashem-engine` after Ctrl-C. Without
    --settings and without ./settings.toml the built-in defaults are used."""
    given = ["--settings", str(ROOT / "settings.toml")] if settings_file == "given" else []
    argv = [sys.executable, "-m", "ashem_app", *given, "--paused",
            *sets(*tiny_overrides(tmp_path))]
    term = Terminal(argv, cwd=ROOT if given else tmp_path)
    try:
        term.wait_for(b"PAUSED", timeout=60)  # the engine holds before its first batch
        term.send("q")
        term.wait_for(b"Quit ASHEM?", timeout=10)
        term.seen = b""
        term.send("y")
        confirmed = time.monotonic()
        while term.proc.poll() is None and time.monotonic() - confirmed < 5:
            term.read(0.05)
        gone = time.monotonic() - confirmed
        assert term.proc.poll() == 130, term.seen[-2000:]
        print(f"process gone {gone:.2f} s after the confirmation")
        assert gone < 2.0, f"process took {gone:.2f} s to end"
    finally:
        term.close()
    run_dir = next((tmp_path / "runs").iterdir())
    kinds = (run_dir / "events.jsonl").read_text()
    assert '"RunCancelled"' in kinds  # the engine ended cleanly, not killed
