"""Starts a program in a pseudo-terminal (100 × 30), waits until TEXT is on its screen,
types KEYS one by one, and checks that it exits with CODE within 10 s.

    python3 .ci/pty_quit.py TEXT KEYS CODE -- PROGRAM [ARGS...]

Standard library only, so it runs outside any virtual environment."""
from __future__ import annotations

import fcntl
import os
import select
import struct
import subprocess
import sys
import termios
import time


def main(text: str, keys: str, code: int, argv: list[str]) -> int:
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))
    env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "100", "LINES": "30"}
    proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, env=env,
                            start_new_session=True)
    os.close(slave)
    seen = b""

    def read(timeout: float) -> None:
        nonlocal seen
        if select.select([master], [], [], timeout)[0]:
            try:
                seen += os.read(master, 65536)
            except OSError:
                pass

    deadline = time.monotonic() + 120
    while text.encode() not in seen:
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            print(f"pty: {text!r} never appeared; the screen ended with:\n"
                  f"{seen[-1500:].decode(errors='replace')}", file=sys.stderr)
            return 1
        read(0.2)
    for key in keys:
        time.sleep(0.5)
        os.write(master, key.encode())
    deadline = time.monotonic() + 10
    while proc.poll() is None and time.monotonic() < deadline:
        read(0.1)
    if proc.poll() is None:
        proc.kill()
        print("pty: the program did not exit within 10 s of the keys", file=sys.stderr)
        return 1
    if proc.returncode != code:
        print(f"pty: exit code {proc.returncode}, expected {code}", file=sys.stderr)
        return 1
    print(f"pty: saw {text!r}, typed {keys!r}, exit code {code}: ok")
    return 0


if __name__ == "__main__":
    split = sys.argv.index("--")
    text, keys, code = sys.argv[1:split]
    sys.exit(main(text, keys, int(code), sys.argv[split + 1:]))
