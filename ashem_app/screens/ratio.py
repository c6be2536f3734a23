"""A hard ratio typed by the user, as a modal: dismisses with a number in (0, 1), or None.
It only reads the number; the engine checks it again and mines with it."""
from __future__ import annotations

from typing import Optional

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, Static

from .. import keys


def parse_ratio(text: str) -> Optional[float]:
    """A ratio in (0, 1) from "0.3", "30%" or ".3"; None for anything else."""
    text = text.strip()
    try:
        value = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        return None
    return value if 0 < value < 1 else None


class RatioScreen(ModalScreen[Optional[float]]):
    BINDINGS = keys.bindings("ratio")

    def __init__(self, current: float, stage: int) -> None:
        super().__init__(classes="confirm")
        self.current = current
        self.stage = stage

    def compose(self) -> ComposeResult:
        with Vertical(id="confirm-box"):
            yield Static(f"Hard ratio for stage {self.stage + 1}", id="confirm-question")
            yield Static(f"now {self.current:g}; a number in (0, 1), e.g. 0.3 or 30%; "
                         "enter sends it, esc cancels", id="confirm-detail")
            yield Input(placeholder=f"{self.current:g}", id="ratio-input")
            yield Static("", id="ratio-error")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        value = parse_ratio(event.value)
        if value is None:
            self.query_one("#ratio-error", Static).update(
                f"{event.value.strip()!r} is not a ratio in (0, 1)")
            return
        self.dismiss(value)

    def action_cancel(self) -> None:
        self.dismiss(None)
