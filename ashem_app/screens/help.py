"""The `?` screen: every key, from the registry."""
from __future__ import annotations

from rich.console import Group
from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

from .. import keys


def _scope_table(title: str, rows) -> Table:
    table = Table(box=None, show_header=False, expand=True, padding=(0, 1),
                  title=Text(title, style="bold underline"), title_justify="left")
    table.add_column("key", style="bold cyan", no_wrap=True, width=8)
    table.add_column("what it does", ratio=1)
    for key, text in rows:
        table.add_row(key, text)
    return table


def help_table() -> Group:
    parts = []
    for scope in keys.SCOPES:
        rows = list(keys.help_rows(scope))
        if scope == "app":
            rows.append(("ctrl+p", "Command palette: the main actions by name"))
        if rows:
            parts.append(_scope_table(keys.SCOPE_TITLES[scope], rows))
    return Group(*parts)


class HelpScreen(ModalScreen[None]):
    BINDINGS = keys.bindings("help")

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="help-box") as box:
            box.border_title = "Keys"
            box.border_subtitle = "esc / ? to close"
            yield Static(help_table(), id="help-table")

    def action_close(self) -> None:
        self.dismiss(None)
