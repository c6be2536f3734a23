"""What screens and widgets ask of the app: small messages, handled by `AshemApp`.

Screens never call into the app; they post one of these, and it bubbles up to the app
(`on_continue_run`, `on_abort_run`, `on_steer_run`, `on_step_selected`).
"""
from __future__ import annotations

from textual.message import Message


class ContinueRun(Message):
    """Resume the held or paused run."""


class AbortRun(Message):
    """Cancel the run (already confirmed); the app stays open."""


class SteerRun(Message):
    """A new hard ratio for the mining transition the run holds at (the engine recomputes
    and reports the mining's figures again)."""

    def __init__(self, hard_ratio: float) -> None:
        super().__init__()
        self.hard_ratio = hard_ratio


class StepSelected(Message):
    """Open the inspection screen of one timeline step."""

    def __init__(self, step_id: str) -> None:
        super().__init__()
        self.step_id = step_id


class EventsWaiting(Message):
    """Posted from any thread (the engine's) when events other than BatchProgress wait in
    the app's inbox: the UI thread applies them now rather than at the next refresh tick."""
