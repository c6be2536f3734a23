"""RunControl: the thread-safe handle through which a UI pauses, resumes and cancels a run.
The engine calls `checkpoint` at every batch boundary and `boundary` between stages: both block
while paused and raise `Cancelled` once cancelled, so a cancel is honoured within one batch."""
from __future__ import annotations

import threading
from typing import Callable, Iterable, Optional


class Cancelled(Exception):
    def __init__(self, where: str):
        super().__init__(f"cancelled at {where}")
        self.where = where


class RunControl:
    def __init__(self, pause_at: Iterable[str] = (), hold_at_boundaries: bool = True,
                 start_paused: bool = False):
        self._cond = threading.Condition()
        self.paused, self.cancelled = start_paused, False  # changed by _set only: it wakes waiters
        self.pause_at = set(pause_at)
        self.hold_at_boundaries = hold_at_boundaries
        # Set by the orchestrator so that Paused / Resumed reach the sinks.
        self.on_pause: Optional[Callable[[str, str, Optional[str]], None]] = None
        self.on_resume: Optional[Callable[[str], None]] = None

    # -- called from the UI thread -------------------------------------------------------
    def pause(self) -> None:
        self._set(paused=True)

    def resume(self) -> None:
        self._set(paused=False)

    def cancel(self) -> None:
        self._set(cancelled=True)

    def _set(self, **flags: bool) -> None:
        with self._cond:
            vars(self).update(flags)
            self._cond.notify_all()

    # -- called from the engine thread ---------------------------------------------------
    def checkpoint(self, where: str) -> None:
        """A batch boundary: honour cancel, and wait here while paused."""
        self._wait(where, reason="user", boundary=None)

    def boundary(self, name: str, where: str) -> None:
        """A stage boundary: holds if `name` is in pause_at (and holding is enabled)."""
        if self.hold_at_boundaries and name in self.pause_at:
            self._set(paused=True)
            self._wait(where, reason="pause_at", boundary=name)
        else:
            self.checkpoint(where)

    def _wait(self, where: str, reason: str, boundary: Optional[str]) -> None:
        with self._cond:
            paused = self.paused and not self.cancelled
        if paused and self.on_pause:
            self.on_pause(where, reason, boundary)
        with self._cond:
            self._cond.wait_for(lambda: self.cancelled or not self.paused)
            if self.cancelled:
                raise Cancelled(where)
        if paused and self.on_resume:
            self.on_resume(where)
