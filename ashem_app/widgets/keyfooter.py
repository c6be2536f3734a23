"""The dashboard's footer: Textual's Footer, its keys marked so that a compact screen can
leave the less needed ones out (CSS: `FooterKey.-extra`, `FooterKey.-command-palette`)."""
from __future__ import annotations

from textual.app import ComposeResult
from textual.widgets import Footer

from .. import keys


class KeyFooter(Footer):
    def __init__(self, scope: str = "app", extra: tuple[str, ...] = (), **kwargs) -> None:
        """`extra`: more actions this screen's compact footer leaves out."""
        super().__init__(**kwargs)
        self.extras = keys.footer_extras(scope) | set(extra)

    def compose(self) -> ComposeResult:
        for widget in super().compose():
            if getattr(widget, "action", None) in self.extras:  # a FooterKey
                widget.add_class("-extra")
            yield widget
