"""`ashem --attach RUN_DIR`: a dashboard following and steering a run another process writes.

The acceptance test starts a real headless `python -m ashem_engine run --hold` on a tiny
configuration and drives an attached app with Pilot: pause, resume, hold at mining-1, change
the hard ratio (a step key and a typed value), continue; the engine's event log shows every
command, and stage 2 trains on the hard tokens of the chosen ratio. The engine is another
process, so Pilot's idle detection is not stalled by its training."""
from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest
from app_events import FakeControl, make_events, plain, until, write_events
from tiny import sets, tiny_overrides

from ashem_app.__main__ import main
from ashem_app.app import AshemApp
from ashem_app.screens.confirm import ConfirmScreen
from ashem_app.screens.inspect import InspectScreen
from ashem_app.screens.ratio import RatioScreen, parse_ratio
from ashem_app.sources import ControlledSource, RunDirSource
from ashem_engine.rundir import COMMAND_LOG
from ashem_engine.events import CommandIgnored, read_events

ROOT = Path(__file__).resolve().parents[1]


async def wait_for(condition, timeout: float = 60.0, what: str = "") -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


def start_headless(tmp_path: Path) -> subprocess.Popen:
    overrides = tiny_overrides(tmp_path, 'run.pause_at=["mining-1"]', "stages.1.max_epochs=20",
                               "stages.1.patience=20", "evaluation.sweep_points=0")
    argv = [sys.executable, "-m", "ashem_engine", "run", "--hold", "--quiet", *sets(*overrides)]
    return subprocess.Popen(argv, cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)


async def run_dir_of(tmp_path: Path, engine: subprocess.Popen) -> Path:
    runs = tmp_path / "runs"

    def started():
        assert engine.poll() is None, engine.stdout.read().decode()[-2000:]
        return runs.is_dir() and any((d / "events.jsonl").exists() for d in runs.iterdir())
    await wait_for(started, 60, "the engine's events.jsonl")
    (run_dir,) = runs.iterdir()
    return run_dir


async def test_attach_pause_resume_steer_and_continue_a_headless_run(tmp_path):
    engine = start_headless(tmp_path)
    try:
        run_dir = await run_dir_of(tmp_path, engine)
        app = AshemApp(RunDirSource(run_dir, poll_interval=0.1))
        async with app.run_test(size=(100, 30)) as pilot:
            await pause_and_resume(app, pilot)
            await steer_and_continue(app, pilot)
            await wait_for(lambda: app.view.status == "finished", 60, "the end of the run")
            await pilot.press("q")  # detaches: nothing to ask, nothing to cancel
        assert app.return_code == 0
        assert engine.wait(30) == 0
    finally:
        if engine.poll() is None:
            engine.kill()
            engine.wait()
    check_the_event_log(run_dir, app)


async def pause_and_resume(app: AshemApp, pilot) -> None:
    await wait_for(lambda: app.view.status == "running", 30, "RunStarted")
    await pilot.press("space")
    await wait_for(lambda: app.view.status == "paused", 10, "Paused")
    assert app.view.pause.reason == "user" and app.view.current_stage == 1
    assert "PAUSED" in plain(app.dashboard.query_one("#header-right"))
    await pilot.press("space")
    await wait_for(lambda: app.view.status == "running", 10, "Resumed")


async def steer_and_continue(app: AshemApp, pilot) -> None:
    await wait_for(lambda: app.view.held_at == "mining-1", 60, "the hold at mining-1")
    await pilot.pause()
    screen = app.screen
    assert isinstance(screen, InspectScreen) and screen.steerable
    assert "+/−: hard ratio" in plain(screen.query_one("#inspect-status"))
    first = app.view.hard_collected[1]
    await pilot.press("minus")  # 0.5 -> 0.45
    await wait_for(lambda: app.view.threshold_computed[1].target_ratio == 0.45, 10, "0.45")
    await pilot.press("r")
    await pilot.pause()
    assert isinstance(app.screen, RatioScreen)
    await pilot.press(*"0.", "enter")  # not a ratio: said in the dialog, which stays
    assert "'0.' is not a ratio" in plain(app.screen.query_one("#ratio-error"))
    await pilot.press("3", "enter")
    await wait_for(lambda: app.view.threshold_computed[1].target_ratio == 0.3, 10, "0.3")
    await pilot.pause()
    hard = app.view.hard_collected[1]
    assert hard.count < first.count and app.view.threshold_computed[1].steered
    assert f"{hard.count:,} / {hard.total:,}" in plain(screen.query_one("#hard-figures"))
    assert "0.3 steered" in plain(screen.query_one("#hard-figures"))
    await pilot.press("c")
    await wait_for(lambda: 2 in app.view.stage_started, 10, "stage 2")


def check_the_event_log(run_dir: Path, app: AshemApp) -> None:
    events = read_events(run_dir / "events.jsonl")
    commands = [(e.command, e.seq, e.value) for e in events if e.kind == "CommandObeyed"]
    assert commands == [("pause", 1, None), ("resume", 2, None), ("set_hard_ratio", 3, 0.45),
                        ("set_hard_ratio", 4, 0.3), ("continue", 5, None)]
    assert [e.kind for e in events].count("CommandIgnored") == 0
    hard = [e for e in events if e.kind == "HardExamplesCollected"]
    stage2 = next(e for e in events if e.kind == "StageStarted" and e.stage == 2)
    assert len(hard) == 3 and stage2.training_tokens == hard[-1].count  # the chosen ratio's
    assert json.loads((run_dir / "settings.json").read_text())["stages"][1]["hard_ratio"] == 0.3
    assert app.view.events_seen == len(events)  # the app saw every event the file has


# -- without an engine: the source, quitting, errors ---------------------------------------------

def test_attach_command_line_errors_are_one_line_exit_2(tmp_path, capsys):
    assert main(["--attach", str(tmp_path / "nowhere")], hard_exit=False) == 2
    assert "attach: no run directory at" in capsys.readouterr().err
    assert main(["--attach", str(tmp_path)], hard_exit=False) == 2
    err = capsys.readouterr().err
    assert "has no events.jsonl" in err and err.count("\n") == 1
    assert main(["--attach", str(tmp_path), "--set", "run.seed=1"], hard_exit=False) == 2
    assert "--attach goes alone" in capsys.readouterr().err


async def test_attached_to_a_finished_run_is_a_replay(tmp_path):
    write_events(make_events(), tmp_path / "events.jsonl")
    app = AshemApp(RunDirSource(tmp_path))
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.pause()
        assert app.view.status == "finished" and not app.source.live
        assert app.check_action("toggle_pause", ()) is None
        await pilot.press("q")
    assert app.return_code == 0 and not (tmp_path / COMMAND_LOG).exists()


async def test_attaching_to_a_held_run_opens_its_step_and_quitting_asks_to_detach(tmp_path):
    """History first (no notifications), then the step the run holds at; q asks before
    leaving a held run alone, and writes no command (the run is not cancelled)."""
    write_events(until(make_events(), boundary="mining-1"), tmp_path / "events.jsonl")
    app = AshemApp(RunDirSource(tmp_path))
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.pause()
        assert isinstance(app.screen, InspectScreen) and app.screen.step_id == "mining-1"
        await pilot.press("escape", "q")
        assert isinstance(app.screen, ConfirmScreen)
        assert "stays held at mining-1" in plain(app.screen.query_one("#confirm-detail"))
        await pilot.press("y")
    assert app.return_code == 0 and not (tmp_path / COMMAND_LOG).exists()


async def test_steering_keys_of_the_apps_own_run_go_to_its_control():
    """In the app's own run (a RunControl in-process) the same keys call set_hard_ratio;
    they are offered only while held at a mining transition, and bounded to (0, 1)."""
    control = FakeControl()
    control.ratios = []
    control.set_hard_ratio = control.ratios.append
    app = AshemApp(ControlledSource(control))
    async with app.run_test(size=(100, 30)) as pilot:
        app.feed(until(make_events(), boundary="stage-1"))
        await pilot.pause()
        assert not app.screen.steerable and app.screen.check_action("step_ratio", (1,)) is False
        await pilot.press("plus")
        assert control.ratios == []
        await pilot.press("c")
        app.feed(until(make_events(), boundary="mining-1")[len(until(make_events(),
                                                                   boundary="stage-1")):])
        await pilot.pause()
        assert app.screen.steerable
        await pilot.press("plus", "plus")  # 0.5 -> 0.55 -> 0.6: from the ratio asked
        assert control.ratios == [0.55, 0.6]
        assert "asked for 0.6" in plain(app.screen.query_one("#inspect-status"))
        app.feed([CommandIgnored(reason="a hard ratio of 0.6 selects no token", where="held",
                                 command="set_hard_ratio", t=9999.0)])
        await pilot.pause()
        assert any("selects no token" in n.message for n in app._notifications)


@pytest.mark.parametrize("text, value", [("0.3", 0.3), ("30%", 0.3), (" .25 ", 0.25),
                                         ("1", None), ("0", None), ("x", None), ("-0.2", None)])
def test_typed_ratios(text, value):
    assert parse_ratio(text) == value
