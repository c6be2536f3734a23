"""The dashboard: header, timeline, progress, metric cards, charts, log, footer."""
from __future__ import annotations

from typing import Iterable

from ashem_engine.events import Event
from textual.app import ComposeResult
from textual.containers import Container
from textual.screen import Screen
from textual.widgets import Footer

from ..state import RunView
from ..widgets.cards import MetricCards
from ..widgets.charts import Charts
from ..widgets.eventlog import EventLog
from ..widgets.header import RunHeader
from ..widgets.progress import ProgressPanel
from ..widgets.timeline import Timeline


class DashboardScreen(Screen[None]):
    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (140, "-wide")]
    VERTICAL_BREAKPOINTS = [(0, "-short"), (40, "-tall")]

    def compose(self) -> ComposeResult:
        yield RunHeader(id="header")
        yield Timeline(id="timeline")
        yield ProgressPanel(id="progress")
        with Container(id="body"):
            yield MetricCards(id="cards")
            yield Charts(id="charts")
        yield EventLog(id="log")
        yield Footer(compact=True)

    def show_view(self, view: RunView, structural: bool = True, live: bool = True,
                  note: str = "") -> None:
        """Update the panels: header and progress always, the rest on structural events.
        `live`: the run can be steered (else the header says REPLAY)."""
        self.query_one(RunHeader).show(view, live)
        self.query_one(ProgressPanel).show(view, note)
        if structural:
            self.query_one(Timeline).show(view)
            self.query_one(MetricCards).show(view)
            self.query_one(Charts).show(view)

    def log_events(self, events: Iterable[tuple[Event, float]]) -> None:
        """(event, clock offset of its attempt) pairs, one log line each."""
        log = self.query_one(EventLog)
        for event, clock_offset in events:
            log.add(event, clock_offset)

    def toggle_log_y(self, view: RunView) -> bool:
        """A log y axis on the PPL charts, or not again; whether it is on now."""
        charts = self.query_one(Charts)
        charts.log_y = not charts.log_y
        charts.show(view)
        return charts.log_y

    def next_chart(self) -> None:
        charts = self.query_one(Charts)
        charts.select(charts.selected + 1)
