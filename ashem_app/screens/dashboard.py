"""The dashboard: header, timeline, progress, metric cards, charts, log, footer."""
from __future__ import annotations

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
from ..widgets.timeline import StepBox, Timeline


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

    def show_view(self, view: RunView, structural: bool = True, mode: str = "live",
                  note: str = "") -> None:
        """Update the panels: header and progress always, the rest on structural events."""
        self.query_one(RunHeader).show(view, mode, note)
        self.query_one(ProgressPanel).show(view, note)
        if structural:
            self.query_one(Timeline).show(view)
            self.query_one(MetricCards).show(view)
            self.query_one(Charts).show(view)

    def on_step_box_selected(self, message: StepBox.Selected) -> None:
        self.app.open_step(message.step_id)  # type: ignore[attr-defined]
