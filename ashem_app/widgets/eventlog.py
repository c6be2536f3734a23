"""The log panel: one line per event (BatchProgress excluded)."""
from __future__ import annotations

from ashem_engine.events import Event
from textual.widgets import RichLog

from ..describe import describe


class EventLog(RichLog):
    def __init__(self, **kwargs) -> None:
        super().__init__(max_lines=2000, wrap=True, markup=False, highlight=False,
                         auto_scroll=True, **kwargs)

    def add(self, event: Event, clock_offset: float = 0.0) -> bool:
        """`clock_offset`: see describe (a resumed run's earlier attempts)."""
        line = describe(event, clock_offset)
        if line is None:
            return False
        self.write(line)
        return True
