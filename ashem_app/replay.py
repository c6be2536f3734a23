"""Reading a run's events.jsonl, once or following a writer that is still going.

`EventFollower.poll()` returns the events of the complete lines written since the last poll;
a torn last line (a writer mid-write, or killed) is kept back until its newline arrives.
A resumed run appends to the same file (a new RunStarted with resumed=True).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

from ashem_engine.events import Event, event_from_dict, read_events

# After RunFinished nothing more comes; after RunCancelled / RunFailed an
# `ashem-engine resume` may append a new session to the same file, so we keep following.
FINAL_KINDS = ("RunFinished",)


class ReplayError(Exception):
    """A replay path that cannot be read; `str()` is one line for the user."""


def resolve_events_path(path: str | os.PathLike) -> Path:
    """A run directory or an events.jsonl file -> the events file."""
    p = Path(path)
    if p.is_dir():
        p = p / "events.jsonl"
    if not p.exists():
        raise ReplayError(f"no events file at {p}")
    if not p.is_file():
        raise ReplayError(f"{p} is not a file")
    return p


def earlier_attempts(run_dir: str | os.PathLike) -> list[Event]:
    """The events a run directory holds already (the attempts before a resume), read with
    the engine's reader: a torn last line (a killed writer) is left out. No file: none."""
    path = Path(run_dir) / "events.jsonl"
    try:
        return read_events(path)
    except FileNotFoundError:
        return []


class EventFollower:
    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._offset = 0
        self._partial = b""
        self.done = False  # RunFinished was read: nothing more will come
        self.skipped = 0  # complete lines that were not valid events

    def poll(self, max_bytes: Optional[int] = None) -> list[Event]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self._offset)
                chunk = f.read() if max_bytes is None else f.read(max_bytes)
        except FileNotFoundError:
            return []
        if not chunk:
            return []
        self._offset += len(chunk)
        data = self._partial + chunk
        lines = data.split(b"\n")
        self._partial = lines.pop()  # b"" when the chunk ended with a newline
        out: list[Event] = []
        for raw in lines:
            raw = raw.strip()
            if not raw:
                continue
            try:
                event = event_from_dict(json.loads(raw.decode("utf-8")))
            except (ValueError, KeyError, TypeError, UnicodeDecodeError):
                self.skipped += 1
                continue
            out.append(event)
            if event.kind in FINAL_KINDS:
                self.done = True
        return out
