"""Where the app's events come from: one `EventSource`, held by the app.

- `ReplaySource(events)`: a finished run's events, given as a list;
- `FollowSource(path)`: a run's events.jsonl, read again every `poll_interval` seconds while
  its writer (a headless engine) is still going; a finished file is simply replayed;
- `LiveSource(settings)`: the engine, run in a Textual thread worker; its events reach the
  app through the app's thread-safe sink (`AshemApp.ingest`), its control is a `RunControl`;
- `RunDirSource(run_dir)`: a run that another process writes (`ashem --attach`): its
  events.jsonl followed as FollowSource does, the user's commands appended to the run
  directory's commands.jsonl (ashem_engine.command_file), which the engine obeys at its next
  batch boundary; quitting detaches and leaves the run going. A finished run is a replay;
- `ControlledSource(control)`: a run whose events are fed to the app from outside
  (`AshemApp.feed`) and whose control is given (the UI tests; `LiveSource`'s base).

The app asks a source for the events there before the UI was ready (`history`), starts it
(`start`), and sends it the user's commands (`pause`, `resume`, `continue_run`, `cancel`,
`steer`). Whether the run can be steered (`live`), whether more events can come (`ended`)
and whether quitting leaves the run going (`detaches`) are the source's to say: the app's
mode is which source it holds.
"""
from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Optional

from textual.worker import Worker, WorkerState

from ashem_engine.events import Event, RunCancelled, RunFailed, RunFinished
from ashem_engine.rundir import EVENTS_FILE

from .replay import EventFollower
from .state import RunView

if TYPE_CHECKING:  # pragma: no cover
    from .app import AshemApp

Runner = Callable[..., Any]  # run_ashem's signature: (settings, sinks=, control=) -> result


class EventSource:
    """A replay: nothing to steer, nothing more to come once the history is read."""

    live = False  # pause / resume / cancel reach a run
    detaches = False  # quitting leaves the run going (it is another process's)

    @property
    def ended(self) -> bool:
        """No more events will come from this source."""
        return True

    @property
    def engine_running(self) -> bool:
        """An engine thread of ours is still going (quitting lets it stop first)."""
        return False

    @property
    def paused(self) -> bool:
        return False

    def history(self) -> list[Event]:
        """The events there before the UI was ready (shown without notifications)."""
        return []

    def start(self, app: "AshemApp") -> None:
        """Begin delivering later events: `app.ingest` from any thread, `app.feed` from the
        UI thread."""

    def pause(self) -> None:
        """Only a live source obeys."""

    def resume(self) -> None:
        """Only a live source obeys."""

    def cancel(self) -> None:
        """Only a live source obeys."""

    def continue_run(self) -> None:
        """Go on from a held transition (a resume)."""
        self.resume()

    def steer(self, hard_ratio: float) -> None:
        """A new hard ratio for the mining transition the run holds at (live sources)."""

    def wait(self, timeout: float) -> bool:
        """Wait up to `timeout` s for the engine thread; whether it has stopped."""
        return True

    def engine_ended(self, worker: Worker, state: WorkerState, view: RunView
                     ) -> Optional[list[Event]]:
        """When `worker` is this source's engine and `state` an end: the final event the
        engine did not send ([] when it did); None for any other worker or state."""
        return None


class ReplaySource(EventSource):
    def __init__(self, events: Iterable[Event]) -> None:
        self._events = list(events)

    def history(self) -> list[Event]:
        events, self._events = self._events, []
        return events


class FollowSource(EventSource):
    """A run's events.jsonl, followed while it is written (until its RunFinished)."""

    def __init__(self, path: str | Path, poll_interval: float = 0.5) -> None:
        self.follower = EventFollower(path)
        self.poll_interval = poll_interval
        self._timer: Any = None

    @property
    def ended(self) -> bool:
        return self.follower.done

    def history(self) -> list[Event]:
        return self.follower.poll()

    def start(self, app: "AshemApp") -> None:
        if not self.ended:
            self._timer = app.set_interval(self.poll_interval, lambda: self._poll(app),
                                           name="ashem-follow")

    def _poll(self, app: "AshemApp") -> None:
        events = self.follower.poll()
        if events:
            app.feed(events)
        if self.ended and self._timer is not None:
            self._timer.stop()


class ControlledSource(EventSource):
    """A run steered through `control` (pause / resume / cancel), its events fed from
    outside with `AshemApp.feed`; `history` is what had happened before."""

    live = True

    def __init__(self, control: Any, history: Iterable[Event] = ()) -> None:
        self.control = control
        self._history = list(history)

    @property
    def ended(self) -> bool:
        return False  # only the events fed say so

    @property
    def paused(self) -> bool:
        return bool(self.control.paused)

    def history(self) -> list[Event]:
        events, self._history = self._history, []
        return events

    def pause(self) -> None:
        self.control.pause()

    def resume(self) -> None:
        self.control.resume()

    def cancel(self) -> None:
        self.control.cancel()

    def steer(self, hard_ratio: float) -> None:
        self.control.set_hard_ratio(hard_ratio)


class RunDirSource(FollowSource):
    """A run another process writes (headless `ashem-engine run`, `resume`, or rank 0 under
    torchrun): followed, and steered through commands.jsonl. Whether it is paused is what the
    engine's events say (the view), never assumed here. Writing a command may raise OSError."""

    detaches = True

    def __init__(self, run_dir: str | Path, poll_interval: float = 0.25) -> None:
        super().__init__(Path(run_dir) / EVENTS_FILE, poll_interval)
        self.run_dir = Path(run_dir)
        self._finished_before = False

    @property
    def live(self) -> bool:  # type: ignore[override]
        """A run that had finished when attached is a replay."""
        return not self._finished_before

    def history(self) -> list[Event]:
        events = super().history()
        self._finished_before = self.follower.done
        return events

    def start(self, app: "AshemApp") -> None:
        if self.live:
            self._timer = app.set_interval(self.poll_interval, lambda: self._poll(app),
                                           name="ashem-attach")

    def _send(self, command: str, value: Optional[float] = None) -> None:
        from ashem_engine.command_file import write_command

        write_command(self.run_dir, command, value)

    def pause(self) -> None:
        self._send("pause")

    def resume(self) -> None:
        self._send("resume")

    def continue_run(self) -> None:
        self._send("continue")

    def cancel(self) -> None:
        self._send("abort")

    def steer(self, hard_ratio: float) -> None:
        self._send("set_hard_ratio", hard_ratio)


def run_engine(settings: Any, sinks=(), control: Any = None) -> Any:
    from ashem_engine.run import run_ashem  # the engine is imported only when a run starts
    from ashem_engine.sinks import build_sinks

    return run_ashem(settings, sinks=build_sinks(extra=sinks), control=control)


class LiveSource(ControlledSource):
    """The engine in a thread worker: `runner(settings, sinks=(app.ingest,), control=...)`.
    The engine thread touches no widget; it only calls the app's sink."""

    def __init__(self, settings: Any, runner: Optional[Runner] = None,
                 start_paused: bool = False, control: Any = None,
                 history: Iterable[Event] = ()) -> None:
        """`history`: what the run did before (a resumed run's earlier attempts), shown
        first, without notifications or pop-ups; then the engine's events."""
        if control is None:
            from ashem_engine.control import RunControl

            control = RunControl(pause_at=None,  # the run's own run.pause_at
                                 start_paused=start_paused)
        super().__init__(control, history)
        self.settings = settings
        self.runner = runner or run_engine
        self.worker: Optional[Worker] = None
        self.done = threading.Event()  # set when the engine thread returns
        self.final_sent = False  # this engine sent its final event (the history's don't count)

    @property
    def ended(self) -> bool:
        return self.done.is_set()

    @property
    def engine_running(self) -> bool:
        return self.worker is not None and not self.ended

    def start(self, app: "AshemApp") -> None:
        sink = app.ingest
        self.worker = app.run_worker(lambda: self._main(sink), name="engine", group="engine",
                                     thread=True, exit_on_error=False,
                                     description="ASHEM run")

    def _main(self, sink: Callable[[Event], None]) -> Any:
        def forward(event: Event) -> None:  # the engine thread: a flag and the app's sink
            if isinstance(event, _FINAL_EVENTS):
                self.final_sent = True
            sink(event)

        try:
            return self.runner(self.settings, sinks=(forward,), control=self.control)
        finally:
            self.done.set()

    def wait(self, timeout: float) -> bool:
        return self.done.wait(timeout=timeout)

    def engine_ended(self, worker: Worker, state: WorkerState, view: RunView
                     ) -> Optional[list[Event]]:
        if worker is not self.worker or state not in _WORKER_ENDS:
            return None
        if self.final_sent or state == WorkerState.CANCELLED:
            return []
        t, run_dir = view.t, view.run_dir
        if state == WorkerState.SUCCESS:
            result = worker.result
            if getattr(result, "status", None) == "cancelled":
                return [RunCancelled(run_dir=run_dir, where="engine", seconds=t, t=t)]
            message = str(getattr(result, "error", None) or
                          "the engine ended without a final event")
        else:
            err = worker.error
            message = f"{type(err).__name__}: {err}"
        return [RunFailed(error_kind="internal", message=message, where="engine worker",
                          run_dir=run_dir, t=t)]


_WORKER_ENDS = (WorkerState.SUCCESS, WorkerState.ERROR, WorkerState.CANCELLED)
_FINAL_EVENTS = (RunFinished, RunCancelled, RunFailed)
