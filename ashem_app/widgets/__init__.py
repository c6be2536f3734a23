"""Small dashboard widgets; each one shows part of a `RunView` (`show(view)`)."""
from __future__ import annotations

from rich.text import Text
from textual.widgets import Static


def set_text(widget: Static, text: Text | str, layout: bool = False) -> None:
    """Update a Static only when what it shows changed; without a relayout unless asked
    (the dashboard's boxes have fixed sizes). Keeps redraws cheap while training runs."""
    if getattr(widget, "_ashem_last", None) == text:
        return
    widget._ashem_last = text  # type: ignore[attr-defined]
    widget.update(text, layout=layout)
