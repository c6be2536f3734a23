"""AshemApp: the Textual dashboard around an ASHEM run.

Three ways to get events:
- live: `settings` given; the engine runs in a Textual thread worker, its sink hands events to
  the UI thread (`ingest`, thread-safe, never blocks the engine);
- attached: a `control` but no settings (tests): events come from `feed()`;
- replay: `replay_path` (followed while the writer is still going) or a list of `events`.

`compare`: the sweeps of other runs (`ashem --compare`), shown with this run's own sweep on
the comparison screen (`c`).

Events are reduced into a `RunView` (state.py). High-rate BatchProgress events only update
the header and progress panel, at most `refresh_interval` apart; the other panels and the
charts are redrawn only when a structural event (epoch end, mining, …) arrives.
"""
from __future__ import annotations

import threading
from collections import deque
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Sequence

from textual.app import App
from textual.message import Message
from textual.screen import Screen
from textual.worker import Worker, WorkerState

from ashem_engine.exitcodes import exit_code
from ashem_engine.events import (
    BatchProgress, Event, Paused, RunCancelled, RunFailed, RunFinished, SweepComputed,
)

from . import keys
from .commands import AshemCommands
from .comparison import ComparisonError, comparison_of
from .export import export_metrics
from .replay import EventFollower
from .screens.compare import ComparisonScreen
from .screens.confirm import ConfirmScreen
from .screens.dashboard import DashboardScreen
from .screens.help import HelpScreen
from .screens.inspect import InspectScreen
from .state import RunView, reduce
from .widgets.charts import Charts
from .widgets.eventlog import EventLog

Runner = Callable[..., Any]


def default_runner(settings, sinks=(), control=None):
    from ashem_engine.run import run_ashem  # the engine is imported only when a run starts

    return run_ashem(settings, sinks=sinks, control=control)


class AshemApp(App[int]):
    CSS_PATH = Path(__file__).with_name("app.tcss")  # absolute: subclasses live elsewhere
    TITLE = "ashem"
    BINDINGS = keys.bindings("app")
    COMMANDS = App.COMMANDS | {AshemCommands}

    class Wake(Message):
        """Posted (from any thread) when structural events wait in the inbox."""

    def __init__(self, *, settings: Any = None, runner: Optional[Runner] = None,
                 control: Any = None, start_paused: bool = False,
                 replay_path: Optional[str | Path] = None, events: Iterable[Event] = (),
                 auto_inspect: Optional[bool] = None, poll_interval: float = 0.5,
                 refresh_interval: float = 0.25, output_dir: Optional[str | Path] = None,
                 quit_grace: float = 1.2, compare: Sequence[dict] = ()) -> None:
        super().__init__()
        self.settings = settings
        self._runner = runner or (default_runner if settings is not None else None)
        if settings is not None and control is None:
            from ashem_engine.control import RunControl

            control = RunControl(pause_at=tuple(settings.run.pause_at),
                                 start_paused=start_paused)
        self.control = control
        self.replay_path = Path(replay_path) if replay_path else None
        self._initial = list(events)
        self.auto_inspect = self.is_live if auto_inspect is None else auto_inspect
        self.poll_interval = poll_interval
        self.refresh_interval = refresh_interval
        self.output_dir = Path(output_dir) if output_dir else None
        self.quit_grace = quit_grace
        self.compare_sweeps = list(compare)

        self.view = RunView()
        self.dashboard = DashboardScreen()
        self._inbox: deque[Event] = deque()
        self._note = ""
        self._loaded = False  # initial replay events applied; later ones may notify/pop up
        self._ui_ready = False
        self._quitting = False
        self._follower: Optional[EventFollower] = None
        self._follow_timer = None
        self._engine_worker: Optional[Worker] = None
        self.engine_done = threading.Event()
        self.events_applied = 0
        self.redraws = 0  # structural redraws (for tests / the bench)

    # -- properties ------------------------------------------------------------------------
    @property
    def is_live(self) -> bool:
        return self.control is not None

    @property
    def mode(self) -> str:
        return "live" if self.is_live else "replay"

    @property
    def engine_running(self) -> bool:
        return self._engine_worker is not None and not self.engine_done.is_set()

    @property
    def run_active(self) -> bool:
        """A live run that has not ended (quitting must cancel it first)."""
        if not self.is_live or self.view.terminal:
            return False
        if self._engine_worker is not None:
            return not self.engine_done.is_set()
        return True

    def get_default_screen(self) -> Screen:
        return self.dashboard

    # -- start -----------------------------------------------------------------------------
    def on_ready(self) -> None:
        self._ui_ready = True
        self.dashboard.show_view(self.view, True, self.mode, self._note)
        self.set_interval(self.refresh_interval, self._drain, name="ashem-refresh")
        # What was there before we started is history: no notifications, no pop-ups.
        early = list(self._inbox)
        self._inbox.clear()
        history = self._initial
        self._initial = []
        if self.replay_path is not None:
            self._follower = EventFollower(self.replay_path)
            history = [*history, *self._follower.poll()]
            if not self._follower.done:
                self._follow_timer = self.set_interval(self.poll_interval, self._poll,
                                                       name="ashem-follow")
        self.feed(history)
        self._loaded = True
        self.feed(early)  # fed or sent before the screen was ready: live events
        if self.settings is not None and self._runner is not None:
            self._start_engine()

    def _poll(self) -> None:
        if self._follower is None:
            return
        events = self._follower.poll()
        if events:
            self.feed(events)
        if self._follower.done and self._follow_timer is not None:
            self._follow_timer.stop()

    # -- the engine thread -----------------------------------------------------------------
    def _start_engine(self) -> None:
        self.engine_done.clear()
        self._engine_worker = self.run_worker(
            self._engine_main, name="engine", group="engine", thread=True,
            exit_on_error=False, description="ASHEM run")

    def _engine_main(self) -> Any:
        try:
            return self._runner(self.settings, sinks=(self.ingest,), control=self.control)
        finally:
            self.engine_done.set()

    def ingest(self, event: Event) -> None:
        """The engine's sink. Thread-safe and non-blocking: queue, and wake the UI thread
        for anything but BatchProgress (those wait for the next refresh tick)."""
        self._inbox.append(event)
        if not isinstance(event, BatchProgress):
            try:
                self.post_message(self.Wake())
            except Exception:  # the app is closing; the events are on disk anyway
                pass

    def on_ashem_app_wake(self, _: Wake) -> None:
        self._drain()

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        if event.worker is not self._engine_worker:
            return
        if event.state not in (WorkerState.SUCCESS, WorkerState.ERROR, WorkerState.CANCELLED):
            return
        if not self.screen_stack:  # the app is already closing
            return
        self._drain()
        if not self.view.terminal:
            t = self.view.t
            if event.state == WorkerState.ERROR:
                err = event.worker.error
                self.feed([RunFailed(error_kind="internal",
                                     message=f"{type(err).__name__}: {err}",
                                     where="engine worker", run_dir=self.view.run_dir, t=t)])
            elif event.state == WorkerState.SUCCESS:
                result = event.worker.result
                status = getattr(result, "status", None)
                if status == "cancelled":
                    self.feed([RunCancelled(run_dir=self.view.run_dir, where="engine",
                                            seconds=t, t=t)])
                else:
                    error = getattr(result, "error", None) or \
                        "the engine ended without a final event"
                    self.feed([RunFailed(error_kind="internal", message=str(error),
                                         where="engine worker", run_dir=self.view.run_dir,
                                         t=t)])
        self.refresh_bindings()
        if self._quitting:
            self.leave()

    # -- events -> view --------------------------------------------------------------------
    def feed(self, events: Iterable[Event]) -> None:
        """Apply events now (UI thread)."""
        self._inbox.extend(events)
        self._drain()

    def _drain(self) -> None:
        if not self._inbox or not self._ui_ready:
            return
        batch: list[Event] = []
        while True:
            try:
                batch.append(self._inbox.popleft())
            except IndexError:
                break
        self._apply(batch)

    def _apply(self, batch: list[Event]) -> None:
        old = view = self.view
        log = self.dashboard.query_one(EventLog)
        structural: list[Event] = []
        for event in batch:
            view = reduce(view, event)
            if not isinstance(event, BatchProgress):
                structural.append(event)
                log.add(event)
        self.view = view
        self.events_applied += len(batch)
        if any(e.kind in ("Paused", "Resumed") or e.kind in _TERMINAL for e in structural):
            self._note = ""
        if self._quitting and not view.terminal:
            self._note = "cancelling…"
        self.dashboard.show_view(view, bool(structural), self.mode, self._note)
        if structural:
            self.redraws += 1
            self.sub_title = view.name
            for screen in self.screen_stack[1:]:
                show = getattr(screen, "show_view", None)
                if show is not None:
                    show(view, True)
            if (old.status, old.held_at) != (view.status, view.held_at):
                self.refresh_bindings()  # what is enabled depends on these only
            for event in structural:
                self._react(event)

    def _react(self, event: Event) -> None:
        """Side effects of an event: notifications, the transition screen."""
        if isinstance(event, Paused) and event.reason == "pause_at" and event.boundary:
            if self.auto_inspect and self._loaded and not self.view.terminal:
                self.open_step(event.boundary, auto=True)
        elif isinstance(event, RunFailed):
            if self._loaded or self.is_live:
                self.notify(f"{event.message}\n({event.error_kind}, at {event.where})",
                            title="Run failed", severity="error", timeout=20)
        elif isinstance(event, RunCancelled):
            if self._loaded or self.is_live:
                self.notify(f"cancelled at {event.where}", title="Run cancelled",
                            severity="warning")
            if self._quitting:
                self.leave()
        elif isinstance(event, RunFinished):
            if self._loaded or self.is_live:
                self.notify(f"{event.run_dir}", title="Run finished")
        elif isinstance(event, SweepComputed):
            for screen in self.screen_stack:
                if isinstance(screen, ComparisonScreen):
                    self._refresh_comparison(screen)

    @property
    def exit_code(self) -> int:
        """The engine's rule (exitcodes.exit_code) for the run this app trains; 0 when it
        only shows a run. Quitting before the engine has confirmed the cancel is a cancel."""
        if not self.is_live:
            return 0
        status = self.view.status if self.view.terminal or not self._quitting else "cancelled"
        failed = self.view.failed
        return exit_code(status, failed.error_kind if failed else None)

    def leave(self) -> None:
        self.exit(self.exit_code, return_code=self.exit_code)

    # -- run control -----------------------------------------------------------------------
    def _set_note(self, note: str) -> None:
        self._note = note
        self.dashboard.show_view(self.view, False, self.mode, note)

    def resume_run(self) -> None:
        if self.control is None or self.view.terminal:
            return
        self.control.resume()
        self._set_note("resuming…")

    def abort_run(self) -> None:
        if self.control is None or self.view.terminal:
            return
        self.control.cancel()
        self._set_note("cancelling…")
        self.notify("the run stops at the next batch boundary", title="Aborting")

    def check_action(self, action: str, parameters: tuple) -> Optional[bool]:
        if action in DASHBOARD_ONLY:
            return self.screen is self.dashboard  # False: hidden elsewhere
        if action == "toggle_pause":
            return True if self.is_live and not self.view.terminal else None
        return True

    def action_toggle_pause(self) -> None:
        control = self.control
        if control is None or self.view.terminal:
            self.bell()
            return
        if self.view.status == "paused" or control.paused:
            control.resume()
            self._set_note("resuming…")
        else:
            control.pause()
            self._set_note("pausing at the next batch…")

    def action_request_quit(self) -> None:
        if isinstance(self.screen, ConfirmScreen):
            return
        if not self.run_active:
            self.leave()
            return
        self.push_screen(
            ConfirmScreen("Quit ASHEM?",
                          "The run is cancelled at the next batch boundary; what it has "
                          "finished stays in its run directory.", yes="Quit", no="Stay"),
            self._quit_answer)

    async def action_quit(self) -> None:  # ctrl+q (Textual's own binding) asks too
        self.action_request_quit()

    def _quit_answer(self, yes: Optional[bool]) -> None:
        if not yes:
            return
        self._quitting = True
        if self.control is not None:
            self.control.cancel()
        if self.engine_running:
            self._set_note("cancelling…")
            self.set_timer(self.quit_grace, lambda: self.leave())
        else:
            self.leave()

    # -- screens ---------------------------------------------------------------------------
    def open_step(self, step_id: str, auto: bool = False) -> None:
        view = self.view
        step = view.step(step_id)
        if step is None:
            return
        if not auto and not view.has_detail(step):
            self.notify(f"{step.label}: nothing to show yet", severity="warning", timeout=3)
            return
        top = self.screen
        if isinstance(top, InspectScreen):
            if top.step_id == step_id:
                top.show_view(view)
            else:
                self.switch_screen(InspectScreen(step_id))
        elif top is self.dashboard:
            self.push_screen(InspectScreen(step_id))
        # over a dialog or the help: leave it; the timeline can open it later

    def action_open_step(self, number: int) -> None:
        steps = self.view.steps()
        if 1 <= number <= len(steps):
            self.open_step(steps[number - 1].id)

    def action_inspect_current(self) -> None:
        view = self.view
        target = view.held_at or (view.holds[-1].boundary if view.holds else None)
        if target is None:
            done = [s for s in view.steps() if view.has_detail(s)]
            target = done[-1].id if done else None
        if target is None:
            self.notify("nothing to inspect yet", severity="warning", timeout=3)
            return
        self.open_step(target)

    def action_show_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen())

    def comparison(self) -> dict:
        """This run's sweep (once it has one) with the sweeps given by --compare, combined
        by the engine. Raises ComparisonError (one line) on a sweep that is not complete."""
        return comparison_of(self.view, self.compare_sweeps)

    def action_open_compare(self) -> None:
        if isinstance(self.screen, ComparisonScreen):
            return
        try:
            comparison = self.comparison()
        except ComparisonError as err:
            self.notify(str(err), title="Cannot compare", severity="error")
            return
        self.push_screen(ComparisonScreen(comparison))

    def _refresh_comparison(self, screen: ComparisonScreen) -> None:
        try:
            screen.show_comparison(self.comparison())
        except ComparisonError as err:
            self.notify(str(err), title="Cannot compare", severity="error")

    # -- charts, export, screenshot --------------------------------------------------------
    def action_toggle_log_y(self) -> None:
        charts = self.dashboard.query_one(Charts)
        charts.log_y = not charts.log_y
        charts.show(self.view)
        self.notify(f"log y axis {'on' if charts.log_y else 'off'}", timeout=2)

    def action_next_chart(self) -> None:
        charts = self.dashboard.query_one(Charts)
        charts.select(charts.selected + 1)

    def output_location(self) -> tuple[Path, str]:
        """Where exports go: the run directory when live, else the current directory
        (file names then start with the run name)."""
        if self.output_dir is not None:
            return self.output_dir, f"{self.view.name or 'ashem'}-"
        run_dir = Path(self.view.run_dir) if self.view.run_dir else None
        if self.is_live and run_dir is not None and run_dir.is_dir():
            return run_dir, ""
        return Path.cwd(), f"{self.view.name or 'ashem'}-"

    def action_export_metrics(self) -> None:
        directory, prefix = self.output_location()
        try:
            csv_path, json_path = export_metrics(self.view, directory, prefix)
        except OSError as err:
            self.notify(f"export failed: {err}", severity="error")
            return
        self.notify(f"{csv_path}\n{json_path}", title="Metrics exported", timeout=8)

    def action_screenshot(self, filename: Optional[str] = None,
                          path: Optional[str] = None) -> None:
        directory, prefix = self.output_location()
        try:
            saved = self.save_screenshot(filename, str(path or directory))
        except OSError as err:
            self.notify(f"screenshot failed: {err}", severity="error")
            return
        self.notify(saved, title="Screenshot saved", timeout=8)


DASHBOARD_ONLY = ("next_chart", "toggle_log_y", "inspect_current", "open_compare")
_TERMINAL = ("RunFinished", "RunCancelled", "RunFailed")
