"""Reading a run's events.jsonl, once or following a writer that is still going.

`EventFollower.poll()` returns the events of the complete lines written since the last poll
(the engine's reader, `read_new_events`); a torn last line (a writer mid-write, or killed) is
kept back until its newline arrives. A resumed run appends to the same file (a new RunStarted
with resumed=True).
"""
from __future__ import annotations

import os
from pathlib import Path

from ashem_engine.events import Event, read_events, read_new_events
from ashem_engine.rundir import EVENTS_FILE

# After RunFinished nothing more comes; after RunCancelled / RunFailed an
# `ashem-engine resume` may append a new session to the same file, so we keep following.
FINAL_KINDS = ("RunFinished",)


class ReplayError(Exception):
    """A replay path that cannot be read; `str()` is one line for the user."""


def resolve_events_path(path: str | os.PathLike) -> Path:
    """A run directory or an events.jsonl file -> the events file."""
    p = Path(path)
    if p.is_dir():
        p = p / EVENTS_FILE
    if not p.exists():
        raise ReplayError(f"no events file at {p}")
    if not p.is_file():
        raise ReplayError(f"{p} is not a file")
    return p


def earlier_attempts(run_dir: str | os.PathLike) -> list[Event]:
    """The events a run directory holds already (the attempts before a resume), read with
    the engine's reader: a torn last line (a killed writer) is left out. No file: none."""
    path = Path(run_dir) / EVENTS_FILE
    try:
        return read_events(path)
    except FileNotFoundError:
        return []


class EventFollower:
    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._offset = 0  # where the first line not yet read begins
        self.done = False  # RunFinished was read: nothing more will come
        self.skipped = 0  # complete lines that were not valid events

    def poll(self) -> list[Event]:
        try:
            events, self._offset, skipped = read_new_events(self.path, self._offset)
        except FileNotFoundError:
            return []
        self.skipped += skipped
        self.done = self.done or any(e.kind in FINAL_KINDS for e in events)
        return events
