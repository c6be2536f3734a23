"""Command palette provider: the main actions, from the key registry."""
from __future__ import annotations

from functools import partial

from textual.command import DiscoveryHit, Hit, Hits, Provider

from . import keys


class AshemCommands(Provider):
    def _entries(self):
        for spec in keys.palette_actions():
            title = f"{spec.description}  ({keys.display_key(spec)})"
            yield spec, title, partial(self.app.run_action, spec.action)

    async def discover(self) -> Hits:
        for spec, title, run in self._entries():
            yield DiscoveryHit(title, run, help=spec.help)

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for spec, title, run in self._entries():
            score = max(matcher.match(title), matcher.match(spec.help) * 0.5)
            if score > 0:
                yield Hit(score, matcher.highlight(title), run, text=title, help=spec.help)
