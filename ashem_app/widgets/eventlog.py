"""The log panel: one line per event (BatchProgress excluded)."""
from __future__ import annotations

from ashem_engine.events import Event
from textual.widgets import RichLog

from ..describe import describe


class EventLog(RichLog):
    def __init__(self, **kwargs) -> None:
        super().__init__(max_lines=2000, wrap=True, markup=False, highlight=False,
                         auto_scroll=True, **kwargs)

    def add(self, event: Event) -> bool:
        line = describe(event)
        if line is None:
            return False
        self.write(line)
        return True
