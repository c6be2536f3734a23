"""Top line: run name, device (threads, torchrun ranks and backend, precision when not
fp32), elapsed run clock, state."""
from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.widgets import Static

from .. import fmt
from ..state import RunView
from . import set_text

STATE_STYLE = {
    "waiting": ("…", "WAITING", "dim"),
    "running": ("●", "RUNNING", "bold green"),
    "paused": ("⏸", "PAUSED", "bold yellow"),
    "finished": ("✓", "FINISHED", "bold cyan"),
    "failed": ("✗", "FAILED", "bold red"),
    "cancelled": ("■", "CANCELLED", "bold magenta"),
}


class RunHeader(Horizontal):
    """`show(view, live)`: `live` False says REPLAY."""

    def compose(self) -> ComposeResult:
        yield Static(id="header-left")
        yield Static(id="header-right")

    def show(self, view: RunView, live: bool = True) -> None:
        left = Text()
        left.append(" ASHEM ", style="bold reverse")
        left.append(" ")
        left.append(view.name or "(no run yet)", style="bold")
        if not live:  # before the device: what a narrow header cuts is the least needed
            left.append("  REPLAY", style="bold blue")
        if view.started:
            left.append(f"  {view.started.device}", style="")
            left.append(f" ×{view.started.threads}", style="dim")
            world, precision = view.started.world_size, view.started.precision
            if world > 1:
                left.append(f" · {world}×{view.started.backend}", style="")
            if precision != "fp32":
                left.append(f" {precision}", style="bold")
        right = Text()
        right.append("elapsed ", style="dim")
        right.append(fmt.duration(view.clock))
        icon, label, style = STATE_STYLE.get(view.status, ("?", view.status.upper(), ""))
        if view.status == "paused" and view.held_at:
            label = f"HELD @ {view.held_at}"
        right.append("   ")
        right.append(f"{icon} {label}", style=style)
        right.append(" ")
        # fixed widths in app.tcss: no relayout on every tick
        set_text(self.query_one("#header-left", Static), left)
        set_text(self.query_one("#header-right", Static), right)
