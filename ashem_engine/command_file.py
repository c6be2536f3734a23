"""Commands from outside the engine's process, through the run directory.

A dashboard attached to a run (`ashem --attach RUN_DIR`) appends one line per command to
`RUN_DIR/commands.jsonl` (`write_command`), in a single O_APPEND write, so that dashboards
writing at the same time neither lose nor mix each other's lines:

    {"id": "ashem 4711@host/4711/3", "command": "set_hard_ratio", "value": 0.3,
     "writer": "ashem 4711@host", "time": 1718000000.123}

`id` is unique (the writer's name, its pid, and its count of commands; a line written by hand
may leave it out); `command` is one of COMMANDS; `value` only for set_hard_ratio; `time` when
it was written (seconds since the epoch). The engine reads the lines completed since its last
read at every batch boundary and every 0.2 s while it waits (`RunControl.poll`) and takes each
once, in the order written; its `seq` is its place in the log (1, 2, ...). A malformed line, a
line written before this attempt started, and a log removed or cut short under the run are
reported and not obeyed; the lines after them are read as usual.

Dashboards older than the log wrote one command at a time to `RUN_DIR/control.json`
(`{"seq": 7, "command": ..., "value": ..., "writer": ...}`, seq one more than the file's
last); the engine still reads that file (`CommandFile`) as it did then."""
from __future__ import annotations

import json
import os
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Optional, Union

from .rundir import COMMAND_FILE, COMMAND_LOG, EVENTS_FILE

COMMANDS = ("pause", "resume", "continue", "abort", "set_hard_ratio")


@dataclass(frozen=True)
class Command:
    command: str
    seq: Optional[int] = None  # None: from the engine's own process (the app's RunControl)
    value: Optional[float] = None
    writer: str = ""
    id: str = ""  # the writer's id of it; control.json's: "control.json#<seq>"


@dataclass(frozen=True)
class Rejected:
    """A command (a log line, a command file) that is not obeyed, and why (one line)."""
    reason: str
    seq: Optional[int] = None
    command: Optional[str] = None
    id: str = ""


Read = Union[Command, Rejected]


def _checked(data: Any, seq: Optional[int], where: str, id_: str = "") -> Read:
    """A parsed command (a JSON value) as a Command, or Rejected with the reason."""
    if not isinstance(data, dict):
        return Rejected(f"{where} does not hold a JSON object", seq, id=id_)
    command, value = data.get("command"), data.get("value")
    if command not in COMMANDS:
        return Rejected(f"{where}: unknown command {command!r} (one of {', '.join(COMMANDS)})",
                        seq, id=id_)
    if command == "set_hard_ratio" and (isinstance(value, bool) or
                                        not isinstance(value, (int, float))):
        return Rejected(f"{where}: set_hard_ratio needs a number, not {value!r}", seq,
                        command, id_)
    return Command(command, seq, float(value) if command == "set_hard_ratio" else None,
                   str(data.get("writer", "")), id_)


def parse_entry(line: bytes, seq: int) -> Read:
    """A commands.jsonl line (the seq-th) as a Command, or Rejected with the reason."""
    where = f"command #{seq} in {COMMAND_LOG}"
    try:
        data = json.loads(line)
    except ValueError as e:  # UnicodeDecodeError included
        return Rejected(f"{where} is not valid JSON ({e})", seq)
    id_ = data.get("id", "") if isinstance(data, dict) else ""
    if not isinstance(id_, str):
        return Rejected(f"{where}: id {id_!r} is not a string", seq)
    return _checked(data, seq, where, id_)


def parse_command(text: str) -> Read:
    """A (legacy) control.json's text as a Command, or Rejected with the reason."""
    try:
        data = json.loads(text)
    except ValueError as e:
        return Rejected(f"{COMMAND_FILE} is not valid JSON ({e})")
    seq = data.get("seq") if isinstance(data, dict) else None
    if isinstance(data, dict) and (not isinstance(seq, int) or isinstance(seq, bool) or seq < 1):
        command = data.get("command")
        return Rejected(f"{COMMAND_FILE}: seq {seq!r} is not a positive integer",
                        command=command if isinstance(command, str) else None)
    return _checked(data, seq, COMMAND_FILE, f"{COMMAND_FILE}#{seq}" if seq else "")


def reported_ids(events_path: str | os.PathLike) -> set[str]:
    """The ids of the commands the run's events.jsonl reports (obeyed or ignored): those an
    earlier attempt of a resumed run took."""
    ids: set[str] = set()
    try:
        with open(events_path, "rb") as f:
            for line in f:
                if b'Command' not in line or b'"id"' not in line:
                    continue
                try:
                    event = json.loads(line)
                except ValueError:
                    continue
                if isinstance(event, dict) and isinstance(event.get("id"), str):
                    ids.add(event["id"])
    except OSError:
        pass
    ids.discard("")
    return ids


def written_before(item: Command) -> Rejected:
    """A command there before this attempt started: reported, never obeyed."""
    return Rejected(f"command #{item.seq} ({item.command}) was written before this attempt "
                    "started", item.seq, item.command, item.id)


class CommandLog:
    """The engine's side of commands.jsonl: `read()` returns the lines completed since the last
    call, in order. The lines there before this attempt started (made with it) are not obeyed:
    reported, unless an earlier attempt reported them already (their ids in `reported`)."""

    HEAD = 256  # bytes of the log's start kept to tell it from a new log

    def __init__(self, path: str | os.PathLike, reported: Iterable[str] = ()):
        self.path, self.reported = Path(path), set(reported)
        self.offset = 0  # where the first line not read yet starts
        self.seq = 0  # the lines read, from every log this attempt saw
        self._file: Optional[tuple] = None  # (st_dev, st_ino) of the log read
        self._head = b""  # its first bytes
        self._error = ""  # the last error reported (reported once)
        st = _stat(self.path)
        self._before = st.st_size if st else 0  # its bytes from before this attempt

    def read(self) -> list[Read]:
        st = _stat(self.path)
        if st is None:
            return self._gone()
        if (st.st_dev, st.st_ino) == self._file and st.st_size == self.offset:
            return []  # one stat while nothing has changed
        try:
            with open(self.path, "rb") as f:
                out = self._restart_if_replaced(f)
                out += self._new_lines(f)
        except FileNotFoundError:
            return self._gone()
        except OSError as e:
            reason = f"{COMMAND_LOG} cannot be read ({e.strerror or e})"
            out, self._error = ([] if reason == self._error else [Rejected(reason)]), reason
            return out
        self._error = ""
        return out

    def _gone(self) -> list[Read]:
        if self._file is None:
            return []
        self._start_again()
        return [Rejected(f"{COMMAND_LOG} was removed under the run; a new one is read from its "
                         "start")]

    def _restart_if_replaced(self, f) -> list[Read]:
        st = os.fstat(f.fileno())
        identity, known = (st.st_dev, st.st_ino), self._file
        self._file = identity
        if known is None or (identity == known and st.st_size >= self.offset and
                             os.pread(f.fileno(), len(self._head), 0) == self._head):
            return []
        self._start_again()
        self._file = identity
        return [Rejected(f"{COMMAND_LOG} was replaced or cut short under the run; the new one "
                         "is read from its start")]

    def _start_again(self) -> None:
        """The log read is gone: a new one is read from its first line, numbered on."""
        self._file, self.offset, self._head, self._before = None, 0, b"", 0

    def _new_lines(self, f) -> list[Read]:
        f.seek(self.offset)
        data = f.read()
        complete = data[:data.rfind(b"\n") + 1]  # a torn last line is left for the next read
        if self.offset == 0:
            self._head = complete[:self.HEAD]
        out, start = [], self.offset
        for line in complete.splitlines(keepends=True):
            start += len(line)
            if line.strip():
                self.seq += 1
                out += self._judge(parse_entry(line, self.seq), left_over=start <= self._before)
        self.offset += len(complete)
        return out

    def _judge(self, item: Read, left_over: bool) -> list[Read]:
        if not left_over:
            return [item]
        if item.id and item.id in self.reported:
            return []  # an earlier attempt reported it
        if isinstance(item, Rejected):
            return [item]
        return [written_before(item)]


class CommandFile:
    """The engine's side of a legacy control.json: `read()` returns what arrived since the
    last call. A command that was there before this attempt started (made with the attempt)
    is not obeyed: reported, unless an earlier attempt reported it (its id in `reported`)."""

    def __init__(self, path: str | os.PathLike, reported: Iterable[str] = ()):
        self.path, self.reported = Path(path), set(reported)
        self.last_seq = 0
        self._seen: Optional[tuple] = None  # the version last read
        self._left_over = self._version()  # the version there before (None: no file)

    def _version(self) -> Optional[tuple]:
        st = _stat(self.path)
        return None if st is None else (st.st_ino, st.st_size, st.st_mtime_ns)

    def read(self) -> list[Read]:
        version = self._version()
        if version is None or version == self._seen:
            return []
        self._seen = version
        try:
            item = parse_command(self.path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as e:
            return [Rejected(f"{COMMAND_FILE} cannot be read ({e})")]
        return self._judge(item, version == self._left_over)

    def _judge(self, item: Read, left_over: bool) -> list[Read]:
        if isinstance(item, Rejected):
            return [item]
        if left_over:
            self.last_seq = item.seq
            return [] if item.id in self.reported else [written_before(item)]
        if item.seq <= self.last_seq:
            return [Rejected(f"command #{item.seq} ({item.command}) is stale: "
                             f"#{self.last_seq} was read already", item.seq, item.command,
                             item.id)]
        self.last_seq = item.seq
        return [item]


class RunCommands:
    """What the engine reads from a run directory: its commands.jsonl, and the control.json
    of a dashboard older than the log (that file's commands first)."""

    def __init__(self, run_dir: str | os.PathLike):
        run_dir = Path(run_dir)
        reported = reported_ids(run_dir / EVENTS_FILE)
        self.log = CommandLog(run_dir / COMMAND_LOG, reported)
        self.legacy = CommandFile(run_dir / COMMAND_FILE, reported)

    def read(self) -> list[Read]:
        return [*self.legacy.read(), *self.log.read()]


def _stat(path: Path) -> Optional[os.stat_result]:
    try:
        return os.stat(path)
    except OSError:
        return None


def writer_name() -> str:
    return f"ashem {os.getpid()}@{socket.gethostname()}"


_written: dict[str, int] = {}  # commands written per writer name, by this process
_written_lock = threading.Lock()


def _next_id(writer: str) -> str:
    with _written_lock:
        _written[writer] = count = _written.get(writer, 0) + 1
    return f"{writer}/{os.getpid()}/{count}"


def write_command(run_dir: str | os.PathLike, command: str, value: Any = None,
                  writer: Optional[str] = None) -> str:
    """The dashboard's side: appends the command to the run's commands.jsonl in one write
    (whole, never mixed with another writer's); its id."""
    if command not in COMMANDS:
        raise ValueError(f"unknown command {command!r}")
    writer = writer if writer is not None else writer_name()
    entry: dict[str, Any] = {"id": _next_id(writer), "command": command}
    if value is not None:
        entry["value"] = value
    entry.update(writer=writer, time=round(time.time(), 3))
    line = (json.dumps(entry) + "\n").encode("utf-8")
    fd = os.open(Path(run_dir) / COMMAND_LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        written = os.write(fd, line)
    finally:
        os.close(fd)
    if written != len(line):  # a full disk: the torn line and the next one appended to it
        # are read as one malformed line (reported); the lines after them as usual
        raise OSError(f"{COMMAND_LOG}: {written} of {len(line)} bytes written")
    return entry["id"]
