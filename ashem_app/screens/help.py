"""The `?` screen: every key, from the registry."""
from __future__ import annotations

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

from .. import keys


def help_table() -> Table:
    table = Table(box=None, show_header=False, expand=True, padding=(0, 1))
    table.add_column("key", style="bold cyan", no_wrap=True, width=10)
    table.add_column("what it does", ratio=1)
    for scope in keys.SCOPES:
        rows = list(keys.help_rows(scope))
        if not rows:
            continue
        table.add_row(Text(keys.SCOPE_TITLES[scope], style="bold underline"), "")
        for key, text in rows:
            table.add_row(key, text)
        table.add_row("", "")
    table.add_row("ctrl+p", "Command palette: the main actions by name")
    return table


class HelpScreen(ModalScreen[None]):
    BINDINGS = keys.bindings("help")

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="help-box") as box:
            box.border_title = "Keys"
            box.border_subtitle = "esc / ? to close"
            yield Static(help_table(), id="help-table")

    def action_close(self) -> None:
        self.dismiss(None)
