"""One real (tiny) run inside the app: it holds at a transition, continues, finishes.

The only UI test with a real training thread. Keys are pressed only while the engine holds
(Pilot's idle detection stalls while a CPU-heavy thread runs); otherwise we poll the view.
"""
from __future__ import annotations

import asyncio
import json
from pathlib import Path

from app_events import plain
from conftest import tiny_settings

from ashem_app.app import AshemApp
from ashem_app.sources import LiveSource
from ashem_app.screens.inspect import InspectScreen


async def wait_for(condition, timeout: float = 90.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        assert loop.time() < deadline, "timed out"
        await asyncio.sleep(0.05)


async def test_tiny_run_holds_continues_and_finishes(tmp_path):
    settings = tiny_settings(tmp_path, 'run.pause_at=["mining-1"]')
    app = AshemApp(LiveSource(settings))
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_for(lambda: app.view.held_at == "mining-1")
        await pilot.pause()
        screen = app.screen
        assert isinstance(screen, InspectScreen) and screen.step_id == "mining-1"
        hard = app.view.hard_collected[1]
        assert f"{hard.count:,} / {hard.total:,}" in plain(screen.query_one("#hard-figures"))
        await pilot.press("c")
        await wait_for(lambda: app.view.terminal)
        assert app.view.status == "finished", app.view.failed
        await wait_for(lambda: app.source.ended, 10)
        await pilot.pause()
        assert app.screen is app.dashboard and not app.run_active
        run_dir = Path(app.view.run_dir)
        kinds = [json.loads(line)["kind"] for line in
                 (run_dir / "events.jsonl").read_text().splitlines()]
        assert kinds.count("Paused") == 1 and kinds.count("Resumed") == 1
        assert kinds[-1] == "RunFinished"
        assert app.view.events_seen == len(kinds)  # the app saw every event the file has
        await pilot.press("e")
        assert (run_dir / "metrics.csv").exists() and (run_dir / "metrics.json").exists()
        await pilot.press("q")
    assert app.return_code == 0
