"""Commands from outside the engine's process, through the run directory.

A dashboard attached to a run (`ashem --attach RUN_DIR`) writes `RUN_DIR/control.json`
atomically, one command at a time:

    {"seq": 7, "command": "set_hard_ratio", "value": 0.3, "writer": "ashem 4711@host"}

`seq` grows by one with every command written; `command` is one of COMMANDS; `value` only for
set_hard_ratio. The engine reads the file at every batch boundary and every 0.2 s while it
waits (`RunControl.poll`), and obeys each new seq once; a malformed file, a stale seq or a
file left from before this attempt started is reported and ignored."""
from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

from .rundir import COMMAND_FILE, atomic_write_json

COMMANDS = ("pause", "resume", "continue", "abort", "set_hard_ratio")


@dataclass(frozen=True)
class Command:
    command: str
    seq: Optional[int] = None  # None: from the engine's own process (the app's RunControl)
    value: Optional[float] = None
    writer: str = ""


@dataclass(frozen=True)
class Rejected:
    """A command file that is not obeyed, and why (one line)."""
    reason: str
    seq: Optional[int] = None
    command: Optional[str] = None


Read = Union[Command, Rejected]


def parse_command(text: str) -> Read:
    """A command file's text as a Command, or Rejected with the reason."""
    try:
        data = json.loads(text)
    except ValueError as e:
        return Rejected(f"{COMMAND_FILE} is not valid JSON ({e})")
    if not isinstance(data, dict):
        return Rejected(f"{COMMAND_FILE} does not hold a JSON object")
    seq, command, value = data.get("seq"), data.get("command"), data.get("value")
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 1:
        return Rejected(f"{COMMAND_FILE}: seq {seq!r} is not a positive integer",
                        command=command if isinstance(command, str) else None)
    if command not in COMMANDS:
        return Rejected(f"{COMMAND_FILE}: unknown command {command!r} (one of "
                        f"{', '.join(COMMANDS)})", seq)
    if command == "set_hard_ratio" and (isinstance(value, bool) or
                                        not isinstance(value, (int, float))):
        return Rejected(f"{COMMAND_FILE}: set_hard_ratio needs a number, not {value!r}",
                        seq, command)
    return Command(command, seq, float(value) if value is not None and
                   command == "set_hard_ratio" else None, str(data.get("writer", "")))


class CommandFile:
    """The engine's side: `read()` returns what arrived since the last call. A command that
    was there before this attempt started (made with the attempt) is not obeyed."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.last_seq = 0
        self._seen: Optional[tuple] = None  # the version last read
        self._left_over = self._version()  # the version there before (None: no file)

    def _version(self) -> Optional[tuple]:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return st.st_ino, st.st_size, st.st_mtime_ns

    def read(self) -> list[Read]:
        version = self._version()
        if version is None or version == self._seen:
            return []
        self._seen = version
        try:
            item = parse_command(self.path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as e:
            return [Rejected(f"{COMMAND_FILE} cannot be read ({e})")]
        return [self._judge(item, version == self._left_over)]

    def _judge(self, item: Read, left_over: bool) -> Read:
        if isinstance(item, Rejected):
            return item
        if left_over:
            self.last_seq = item.seq
            return Rejected(f"command #{item.seq} ({item.command}) was written before this "
                            "attempt started", item.seq, item.command)
        if item.seq <= self.last_seq:
            return Rejected(f"command #{item.seq} ({item.command}) is stale: #{self.last_seq} "
                            "was read already", item.seq, item.command)
        self.last_seq = item.seq
        return item


def writer_name() -> str:
    return f"ashem {os.getpid()}@{socket.gethostname()}"


def write_command(run_dir: str | os.PathLike, command: str, value: Any = None,
                  writer: Optional[str] = None) -> int:
    """The dashboard's side: writes the next command atomically; its seq."""
    if command not in COMMANDS:
        raise ValueError(f"unknown command {command!r}")
    path = Path(run_dir) / COMMAND_FILE
    try:
        before = parse_command(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError):
        before = Rejected("none")
    seq = (before.seq or 0) + 1
    data: dict[str, Any] = {"seq": seq, "command": command}
    if value is not None:
        data["value"] = value
    data["writer"] = writer if writer is not None else writer_name()
    atomic_write_json(path, data)
    return seq
