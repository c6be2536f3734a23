"""AshemApp: the Textual dashboard around an ASHEM run.

The app holds one `EventSource` (sources.py): the live engine in a thread worker, a replay,
a followed events.jsonl, or a run another process writes (`ashem --attach`, steered through
the run directory; quitting detaches). Its mode is which source it holds: a live source can
be paused, resumed, cancelled and steered; a replay cannot.

Events are reduced into a `RunView` (state.py), which the app passes to the screens it
shows. High-rate BatchProgress events (and MachineSampled) only update the header, progress
and machine panels, at most `refresh_interval` apart; the other panels and the charts are
redrawn only when a structural event (epoch end, mining, …) arrives.

Screens and widgets ask for things by posting messages (messages.py): `ContinueRun`,
`AbortRun`, `SteerRun`, `StepSelected`; the app handles them here.

`compare`: the sweeps of other runs (`ashem --compare`), shown with this run's own sweep on
the comparison screen (`c`).
"""
from __future__ import annotations

from collections import deque
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence

from textual.app import App
from textual.screen import Screen
from textual.worker import Worker

from ashem_engine.exitcodes import exit_code
from ashem_engine.events import (
    BatchProgress, CommandIgnored, Event, MachineSampled, Paused, Resumed, RunCancelled,
    RunFailed, RunFinished, SettingChanged, SweepComputed,
)

from . import keys
from .palette import AshemCommands
from .comparison import ComparisonError, comparison_of
from .export import export_metrics
from .messages import AbortRun, ContinueRun, EventsWaiting, SteerRun, StepSelected
from .screens.compare import ComparisonScreen
from .screens.confirm import ConfirmScreen
from .screens.dashboard import DashboardScreen
from .screens.help import HelpScreen
from .screens.inspect import InspectScreen
from .sources import EventSource
from .state import RunView, reduce


class AshemApp(App[int]):
    CSS_PATH = Path(__file__).with_name("app.tcss")  # absolute: subclasses live elsewhere
    TITLE = "ashem"
    BINDINGS = keys.bindings("app")
    COMMANDS = App.COMMANDS | {AshemCommands}

    def __init__(self, source: EventSource, *, compare: Sequence[dict] = (),
                 popups: Optional[bool] = None, output_dir: Optional[str | Path] = None,
                 refresh_interval: float = 0.25, quit_grace: float = 1.2,
                 notice: Optional[str] = None, notice_title: str = "Settings") -> None:
        """`popups`: transition screens open by themselves (default: for a live run).
        `notice`: one line to tell the user at the start (e.g. built-in settings in use)."""
        super().__init__()
        self.source = source
        self.notice, self.notice_title = notice, notice_title
        self.compare_sweeps = list(compare)
        self.popups = source.live if popups is None else popups
        self.output_dir = Path(output_dir) if output_dir else None
        self.refresh_interval = refresh_interval
        self.quit_grace = quit_grace

        self.view = RunView()
        self.dashboard = DashboardScreen()
        self._inbox: deque[Event] = deque()
        self._note = ""
        self._loaded = False  # the history is shown; later events may notify and pop up
        self._ui_ready = False
        self._quitting = False

    @property
    def run_active(self) -> bool:
        """A run we steer that has not ended: quitting asks first, then cancels it."""
        return self.source.live and not self.source.ended and not self.view.terminal

    def get_default_screen(self) -> Screen:
        return self.dashboard

    # -- start -----------------------------------------------------------------------------
    def on_ready(self) -> None:
        self._ui_ready = True
        if self.notice:
            self.notify(self.notice, title=self.notice_title, timeout=10)
        self._show_dashboard(True)
        self.set_interval(self.refresh_interval, self._drain, name="ashem-refresh")
        # What was there before we started is history: no notifications, no pop-ups.
        early = list(self._inbox)
        self._inbox.clear()
        self.feed(self.source.history())
        self._loaded = True
        if self.source.detaches and self.popups and self.view.held_at:  # attached while held
            self.open_step(self.view.held_at, auto=True)
        self.feed(early)  # fed or sent before the screen was ready: live events
        self.source.start(self)

    # -- events in -------------------------------------------------------------------------
    def ingest(self, event: Event) -> None:
        """The engine's sink. Thread-safe and non-blocking: queue, and wake the UI thread
        for anything but BatchProgress and MachineSampled (those wait for the next refresh
        tick)."""
        self._inbox.append(event)
        if not isinstance(event, _TICKED):
            try:
                self.post_message(EventsWaiting())
            except Exception:  # the app is closing; the events are on disk anyway
                pass

    def feed(self, events: Iterable[Event]) -> None:
        """Apply events now (UI thread)."""
        self._inbox.extend(events)
        self._drain()

    def on_events_waiting(self, _: EventsWaiting) -> None:
        self._drain()

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        if not self.screen_stack:  # the app is already closing
            return
        self._drain()
        closing = self.source.engine_ended(event.worker, event.state, self.view)
        if closing is None:
            return
        self.feed(closing)
        self.refresh_bindings()
        if self._quitting:
            self.leave()

    # -- events -> view --------------------------------------------------------------------
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
        structural: list[Event] = []
        logged: list[tuple[Event, float]] = []
        for event in batch:
            view = reduce(view, event)
            if not isinstance(event, _TICKED):
                structural.append(event)
                logged.append((event, view.clock_offset))
        self.view = view
        self.dashboard.log_events(logged)
        if any(isinstance(e, _NOTE_ENDS) for e in structural):
            self._note = ""
        if self._quitting and not view.terminal:
            self._note = "cancelling…"
        self._show_dashboard(bool(structural))
        if not structural:
            return
        self.sub_title = view.name
        for screen in self.screen_stack[1:]:
            if isinstance(screen, InspectScreen):
                screen.show_view(view)
        if (old.status, old.held_at) != (view.status, view.held_at):
            self.refresh_bindings()  # what is enabled depends on these only
        for event in structural:
            self._react(event)

    def _show_dashboard(self, structural: bool) -> None:
        self.dashboard.show_view(self.view, structural, self.source.live, self._note)

    def _react(self, event: Event) -> None:
        """Side effects of an event: notifications, the transition screen."""
        news = self._loaded  # the history (a replay, a resumed run's attempts) is not news
        if isinstance(event, Paused) and event.reason == "pause_at" and event.boundary:
            if self.popups and self._loaded and not self.view.terminal:
                self.open_step(event.boundary, auto=True)
        elif isinstance(event, CommandIgnored) and news:
            self.notify(event.reason, title="Command ignored", severity="warning")
        elif isinstance(event, RunFailed) and news:
            self.notify(f"{event.message}\n({event.error_kind}, at {event.where})",
                        title="Run failed", severity="error", timeout=20)
        elif isinstance(event, RunCancelled):
            if news:
                self.notify(f"cancelled at {event.where}", title="Run cancelled",
                            severity="warning")
            if self._quitting:
                self.leave()
        elif isinstance(event, RunFinished) and news:
            self.notify(f"{event.run_dir}", title="Run finished")
        elif isinstance(event, SweepComputed):
            for screen in self.screen_stack:
                if isinstance(screen, ComparisonScreen):
                    self._refresh_comparison(screen)

    @property
    def exit_code(self) -> int:
        """The engine's rule (exitcodes.exit_code) for the run this app trains; 0 when it
        only shows a run. Quitting before the engine has confirmed the cancel is a cancel."""
        if not self.source.live or self.source.detaches:  # shown only, or another's run
            return 0
        status = self.view.status if self.view.terminal or not self._quitting else "cancelled"
        failed = self.view.failed
        return exit_code(status, failed.error_kind if failed else None)

    def leave(self) -> None:
        self.exit(self.exit_code, return_code=self.exit_code)

    # -- run control -----------------------------------------------------------------------
    def _set_note(self, note: str) -> None:
        self._note = note
        self._show_dashboard(False)

    def _steerable(self) -> bool:
        return self.source.live and not self.view.terminal

    def _send(self, command: Callable[[], None], note: str) -> bool:
        """Hands the source a command; an attached run's command file may not be writable."""
        try:
            command()
        except OSError as err:
            self.notify(f"cannot write the run's command file: {err}", title="Not sent",
                        severity="error")
            return False
        self._set_note(note)
        return True

    def on_continue_run(self, _: ContinueRun) -> None:
        if self._steerable():
            self._send(self.source.continue_run, "resuming…")

    def on_abort_run(self, _: AbortRun) -> None:
        if self._steerable() and self._send(self.source.cancel, "cancelling…"):
            self.notify("the run stops at the next batch boundary", title="Aborting")

    def on_steer_run(self, message: SteerRun) -> None:
        if self._steerable() and self.view.can_steer:
            self._send(lambda: self.source.steer(message.hard_ratio),
                       f"asking for hard ratio {message.hard_ratio:g}…")

    def check_action(self, action: str, parameters: tuple) -> Optional[bool]:
        if action in DASHBOARD_ONLY:
            return self.screen is self.dashboard  # False: hidden elsewhere
        if action == "toggle_pause":
            return True if self._steerable() else None
        return True

    def action_toggle_pause(self) -> None:
        if not self._steerable():
            self.bell()
        elif self.view.status == "paused" or self.source.paused:
            self._send(self.source.resume, "resuming…")
        else:
            self._send(self.source.pause, "pausing at the next batch…")

    def action_request_quit(self) -> None:
        if isinstance(self.screen, ConfirmScreen):
            return
        if self.source.detaches:
            self._detach()
            return
        if not self.run_active:
            self.leave()
            return
        self.push_screen(
            ConfirmScreen("Quit ASHEM?",
                          "The run is cancelled at the next batch boundary; what it has "
                          "finished stays in its run directory.", yes="Quit", no="Stay"),
            self._quit_answer)

    def _detach(self) -> None:
        """Quitting an attached dashboard leaves the run going; a paused or held run stays
        so until a dashboard resumes it, so that is asked first."""
        if not (self.run_active and self.view.status == "paused"):
            self.leave()
            return
        where = self.view.held_at or "its pause"
        self.push_screen(
            ConfirmScreen("Detach from the run?",
                          f"The run stays held at {where} until a dashboard continues it "
                          f"(ashem --attach {self.view.run_dir or 'RUN_DIR'}).",
                          yes="Detach", no="Stay"),
            lambda yes: self.leave() if yes else None)

    async def action_quit(self) -> None:  # ctrl+q (Textual's own binding) asks too
        self.action_request_quit()

    def _quit_answer(self, yes: Optional[bool]) -> None:
        if not yes:
            return
        self._quitting = True
        self.source.cancel()
        if self.source.engine_running:
            self._set_note("cancelling…")
            self.set_timer(self.quit_grace, lambda: self.leave())
        else:
            self.leave()

    # -- screens ---------------------------------------------------------------------------
    def on_step_selected(self, message: StepSelected) -> None:
        self.open_step(message.step_id)

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
                self.switch_screen(InspectScreen(step_id, view, self.source.live))
        elif top is self.dashboard:
            self.push_screen(InspectScreen(step_id, view, self.source.live))
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
        log = self.dashboard.toggle_log_y(self.view)
        self.notify(f"log axes {'on' if log else 'off'} (PPL y, confidence x)", timeout=2)

    def action_next_chart(self) -> None:
        self.dashboard.next_chart()

    def action_cycle_x_axis(self) -> None:
        axis = self.dashboard.cycle_x_axis(self.view)
        self.notify(f"x axis: {axis.label}", timeout=2)

    def output_location(self) -> tuple[Path, str]:
        """Where exports go: the run directory when live, else the current directory
        (file names then start with the run name)."""
        if self.output_dir is not None:
            return self.output_dir, f"{self.view.name or 'ashem'}-"
        run_dir = Path(self.view.run_dir) if self.view.run_dir else None
        if self.source.live and run_dir is not None and run_dir.is_dir():
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


DASHBOARD_ONLY = ("next_chart", "toggle_log_y", "inspect_current", "open_compare",
                  "cycle_x_axis")
# Events that move figures every refresh shows (the header, progress and machine panels):
# not logged, and no redraw of the rest.
_TICKED = (BatchProgress, MachineSampled)
_NOTE_ENDS = (Paused, Resumed, RunFinished, RunCancelled, RunFailed,  # "resuming…" is over
              CommandIgnored, SettingChanged)
