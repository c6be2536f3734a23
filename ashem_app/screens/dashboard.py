"""The dashboard: header, timeline, progress, metric cards, charts, log, footer; the machine
cards under the metric cards, or on a wide screen the machine panel beside the log."""
from __future__ import annotations

from typing import Iterable, Optional

from ashem_engine.events import Event
from textual import events
from textual.app import ComposeResult
from textual.containers import Container, Horizontal, Vertical
from textual.screen import Screen

from ..state import RunView
from ..widgets.cards import MetricCards
from ..widgets.charts import Charts, XAxis
from ..widgets.eventlog import EventLog
from ..widgets.header import RunHeader
from ..widgets.keyfooter import KeyFooter
from ..widgets.machine import MachineCards, MachinePanel
from ..widgets.progress import ProgressPanel
from ..widgets.timeline import Timeline


# Below this width the screen is compact (-compact): short figures on the timeline and in
# the progress row, one line per metric card, the footer's essential keys only.
COMPACT_WIDTH = 100


class DashboardScreen(Screen[None]):
    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (140, "-wide")]
    VERTICAL_BREAKPOINTS = [(0, "-short"), (40, "-tall")]

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self._shown: Optional[tuple[RunView, bool, str]] = None  # show_view's last view

    def compose(self) -> ComposeResult:
        yield RunHeader(id="header")
        yield Timeline(id="timeline")
        yield ProgressPanel(id="progress")
        with Container(id="body"):
            with Vertical(id="side"):
                yield MetricCards(id="cards")
                yield MachineCards(id="machine-cards")
            yield Charts(id="charts")
        with Horizontal(id="bottom"):
            yield EventLog(id="log")
            yield MachinePanel(id="machine-panel")
        yield KeyFooter(compact=True)

    @property
    def compact(self) -> bool:
        return self.has_class("-compact")

    def on_resize(self, event: events.Resize) -> None:
        compact = event.size.width < COMPACT_WIDTH
        if compact != self.compact:
            self.set_class(compact, "-compact")
            if self._shown is not None:
                self.show_view(self._shown[0], True, *self._shown[1:])

    def show_view(self, view: RunView, structural: bool = True, live: bool = True,
                  note: str = "") -> None:
        """Update the panels: header and progress always, the rest on structural events.
        `live`: the run can be steered (else the header says REPLAY)."""
        self._shown = (view, live, note)
        compact = self.compact
        self.query_one(RunHeader).show(view, live)
        self.query_one(ProgressPanel).show(view, note, compact)
        self.query_one(MachineCards).show(view)  # samples come between refreshes
        self.query_one(MachinePanel).show(view)
        if structural:
            self.query_one(Timeline).show(view, compact)
            self.query_one(MetricCards).show(view, compact)
            self.query_one(Charts).show(view)

    def log_events(self, events: Iterable[tuple[Event, float]]) -> None:
        """(event, clock offset of its attempt) pairs, one log line each."""
        log = self.query_one(EventLog)
        for event, clock_offset in events:
            log.add(event, clock_offset)

    def toggle_log_y(self, view: RunView) -> bool:
        """A log y axis on the PPL charts, or not again; whether it is on now."""
        return self.query_one(Charts).toggle_log_y(view)

    def cycle_x_axis(self, view: RunView) -> XAxis:
        """The PPL charts against the next x-axis; which one."""
        return self.query_one(Charts).cycle_x_axis(view)

    def next_chart(self) -> None:
        charts = self.query_one(Charts)
        charts.select(charts.selected + 1)
