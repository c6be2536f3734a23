"""One real (tiny) run inside the app: it holds at a transition, continues, finishes.

The only UI test with a real training thread. Keys are pressed only while the engine holds
(Pilot's idle detection stalls while a CPU-heavy thread runs); otherwise we poll the view.
"""
from __future__ import annotations

import asyncio
import json
from pathlib import Path

from app_events import plain
from tiny import tiny_settings

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
        await pilot.press("minus")  # steered in the app's own run: the same engine code
        await wait_for(lambda: app.view.threshold_computed[1].target_ratio == 0.45, 10)
        await pilot.pause()
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
        assert kinds.count("CommandObeyed") == 1 and kinds.count("SettingChanged") == 1
        stage2 = [json.loads(line) for line in (run_dir / "events.jsonl").read_text()
                  .splitlines() if '"StageStarted"' in line][1]
        assert stage2["training_tokens"] == hard.count  # the steered ratio's hard tokens
        assert kinds[-1] == "RunFinished"
        assert app.view.events_seen == len(kinds)  # the app saw every event the file has
        await pilot.press("e")
        assert (run_dir / "metrics.csv").exists() and (run_dir / "metrics.json").exists()
        await pilot.press("q")
    assert app.return_code == 0


async def test_resume_in_the_app_shows_the_whole_history_on_one_clock(tmp_path):
    """A real tiny run cancelled in stage 1 epoch 2, then `ashem --resume RUN_DIR`'s app:
    the earlier attempt's events come first (no notification), then the resumed engine's;
    the charts' epochs start at stage 1 epoch 1 and the clock goes on from the first
    attempt's seconds."""
    from ashem_app.__main__ import _make_app, build_parser
    from ashem_engine.control import RunControl
    from ashem_engine.events import EpochEnded, read_events
    from ashem_engine.run import run_ashem
    from tiny import tiny_corpus

    settings = tiny_settings(tmp_path)
    control = RunControl()

    def cancel_after_stage1_epoch2(event):
        if isinstance(event, EpochEnded) and (event.stage, event.epoch) == (1, 2):
            control.cancel()

    first = run_ashem(settings, [cancel_after_stage1_epoch2], control,
                      corpus=tiny_corpus(settings))
    assert first.status == "cancelled"
    events_file = Path(first.run_dir) / "events.jsonl"
    before = read_events(events_file)
    with events_file.open("a") as f:
        f.write('{"kind": "Log", "t": 1')  # a torn last line, as after a kill -9
    app = _make_app(build_parser().parse_args(["--resume", str(first.run_dir)]))
    assert isinstance(app, AshemApp)
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_for(lambda: app.view.status == "finished", 120)
        await wait_for(lambda: app.source.ended, 10)
        await pilot.pause()
        view = app.view
        stage_one = [(e.stage, e.epoch) for e in view.epochs if e.stage == 1]
        assert stage_one == [(1, 1), (1, 2), (1, 3)]
        resumed = view.started
        assert resumed.resumed and resumed.seconds_before > 0
        assert view.clock == resumed.seconds_before + view.t > view.t
        assert view.events_seen == len(read_events(events_file))  # every line, once
        log = "".join(strip.text for strip in app.dashboard.query_one("#log").lines)
        assert "run cancelled" in log and log.index("run cancelled") < log.index("resumed on")
        assert not any("cancelled" in n.message for n in app._notifications)
        assert view.stage_ended[1].epochs == 3 and len(before) < view.events_seen
        await pilot.press("q")
    assert app.return_code == 0
