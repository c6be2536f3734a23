"""RunControl: the thread-safe handle through which a UI pauses, resumes and cancels a run.
The engine calls `checkpoint` at every batch boundary and `boundary` between stages: both block
while paused and raise `Cancelled` once cancelled, so a cancel is honoured within one batch.

Commands also come from the run directory's command log, commands.jsonl (command_file.py), and,
to steer, from the app's own thread (`set_hard_ratio`): the engine thread takes them in `poll`,
at every batch boundary and every POLL_S s while it waits, all of them in the order written, and
reports each as an event."""
from __future__ import annotations

import threading
from typing import Callable, Iterable, Optional

from . import events as ev
from .command_file import Command, Read, Rejected

POLL_S = 0.2  # how often a paused or held engine reads the command log


class Cancelled(Exception):
    def __init__(self, where: str):
        super().__init__(f"cancelled at {where}")
        self.where = where


class CommandRefused(Exception):
    """A command that cannot be carried out where the run is; str() says why, in one line."""


# What steering a held mining transition is given: the new hard ratio. It checks the ratio and
# returns what applies it (raising CommandRefused instead when it cannot).
Steering = Callable[[float], Callable[[], None]]


class RunControl:
    def __init__(self, pause_at: Optional[Iterable[str]] = (), hold_at_boundaries: bool = True,
                 start_paused: bool = False):
        """`pause_at`: the hold points (plan.py) to hold at; None: the run's own run.pause_at,
        which the run gives `starts` (a resumed run's, from its run directory)."""
        self._cond = threading.Condition()
        self.paused, self.cancelled = start_paused, False  # changed by _set only: it wakes waiters
        self.pause_at, self._runs_own = set(pause_at or ()), pause_at is None
        self.hold_at_boundaries = hold_at_boundaries
        # Set by the orchestrator so that Paused / Resumed reach the sinks.
        self.on_pause: Optional[Callable[[str, str, Optional[str]], None]] = None
        self.on_resume: Optional[Callable[[str], None]] = None
        self.on_command: Optional[Callable[[ev.Event], None]] = None  # obeyed / ignored
        self.commands = None  # an object with read() -> [Command | Rejected]: RunCommands
        self.steering: Optional[Steering] = None  # set while held at a mining transition
        self.on_wait: Optional[Callable[[], None]] = None  # called every POLL_S while held
        self._queue: list[Command] = []  # commands from the app's own thread

    # -- called from the UI thread -------------------------------------------------------
    def pause(self) -> None:
        self._set(paused=True)

    def resume(self) -> None:
        self._set(paused=False)

    def cancel(self) -> None:
        self._set(cancelled=True)

    def set_hard_ratio(self, ratio: float, writer: str = "app") -> None:
        """Steer the mining transition the run holds at (obeyed by the engine thread)."""
        with self._cond:
            self._queue.append(Command("set_hard_ratio", None, float(ratio), writer))
            self._cond.notify_all()

    def _set(self, **flags: bool) -> None:
        with self._cond:
            vars(self).update(flags)
            self._cond.notify_all()

    # -- called from the engine thread ---------------------------------------------------
    def starts(self, run_pause_at: Iterable[str]) -> None:
        if self._runs_own:
            self.pause_at = set(run_pause_at)

    def checkpoint(self, where: str) -> None:
        """A batch boundary: take commands, honour cancel, and wait here while paused."""
        self._wait(where, reason="user", boundary=None)

    def boundary(self, name: str, where: str) -> None:
        """A hold point: holds if `name` is in pause_at (and holding is enabled)."""
        if self.hold_at_boundaries and name in self.pause_at:
            self._set(paused=True)
            self._wait(where, reason="pause_at", boundary=name)
        else:
            self.checkpoint(where)

    def _wait(self, where: str, reason: str, boundary: Optional[str]) -> None:
        self.poll(where)
        with self._cond:
            paused = self.paused and not self.cancelled
        if paused and self.on_pause:
            self.on_pause(where, reason, boundary)
        while self._waiting(where):
            if self.on_wait is not None:
                self.on_wait()
            self.poll(where)
        if paused and self.on_resume:
            self.on_resume(where)

    def _waiting(self, where: str) -> bool:
        """Waits while paused, until something changes or it is time to read the command
        log again; raises Cancelled once cancelled. Whether to poll and wait on."""
        with self._cond:
            if self.paused and not self.cancelled and not self._queue:
                self._cond.wait_for(lambda: self.cancelled or not self.paused or self._queue,
                                    timeout=None if self.commands is None and self.on_wait
                                    is None else POLL_S)
            if self.cancelled:
                raise Cancelled(where)
            return self.paused or bool(self._queue)

    def poll(self, where: str) -> None:
        """Obeys the commands that came in since the last call, every one, in order: the one
        place that reads the command log (under torchrun rank 0's, dist.SharedControl)."""
        with self._cond:
            queued, self._queue = self._queue, []
        outside = self.commands.read() if self.commands is not None else []
        for item in [*outside, *queued]:
            self._take(item, where)

    def _take(self, item: Read, where: str) -> None:
        try:
            if isinstance(item, Rejected):  # a command not obeyed, reported as a refusal
                raise CommandRefused(item.reason)
            apply = self._check(item)
        except CommandRefused as refused:
            self._report(ev.CommandIgnored(reason=str(refused), where=where,
                                           command=item.command, seq=item.seq, id=item.id))
            return
        self._report(ev.CommandObeyed(command=item.command, where=where, seq=item.seq,
                                      value=item.value, writer=item.writer, id=item.id))
        apply()

    def _check(self, item: Command) -> Callable[[], None]:
        """What obeying `item` does, or CommandRefused: the run is not where it applies."""
        name = item.command
        if name == "pause":
            if self.paused:
                raise CommandRefused("the run is paused already")
            return lambda: self._set(paused=True)
        if name in ("resume", "continue"):
            if not self.paused:
                raise CommandRefused("the run is not paused")
            return lambda: self._set(paused=False)
        if name == "abort":
            return lambda: self._set(cancelled=True)
        if not 0 < item.value < 1:
            raise CommandRefused(f"a hard ratio must be in (0, 1), not {item.value:g}")
        if self.steering is None:
            raise CommandRefused("the run is not held at a mining transition")
        return self.steering(item.value)

    def _report(self, event: ev.Event) -> None:
        if self.on_command is not None:
            self.on_command(event)
