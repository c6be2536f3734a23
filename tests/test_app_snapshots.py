"""Snapshot tests (pytest-textual-snapshot): the dashboard and the transition screen from
the replay fixture, at fixed terminal sizes. Update with `pytest --snapshot-update`."""
from __future__ import annotations

import pytest
from app_events import FakeControl, make_events, until

from ashem_app.app import AshemApp
from ashem_app.sources import ControlledSource, ReplaySource


def test_dashboard_finished_run(snap_compare):
    assert snap_compare(AshemApp(ReplaySource(make_events())), terminal_size=(100, 30))


def test_dashboard_mid_stage_two(snap_compare):
    events = until(make_events(), predicate=lambda e: e.kind == "EpochEnded" and e.stage == 2
                   and e.epoch == 3)
    app = AshemApp(ControlledSource(FakeControl(), events))
    assert snap_compare(app, terminal_size=(100, 30))


def test_transition_screen_at_mining(snap_compare):
    app = AshemApp(ControlledSource(FakeControl()))

    async def hold(pilot):
        app.feed(until(make_events(), boundary="mining-1"))  # pops the screen up
        await pilot.pause()

    assert snap_compare(app, terminal_size=(100, 30), run_before=hold)


def test_help_screen(snap_compare):
    assert snap_compare(AshemApp(ReplaySource(make_events())), terminal_size=(100, 30),
                        press=["question_mark"])


# The classic terminal, a middle size and a wide one (docs/APP.md, "Layouts"): every panel
# readable at 80 x 24 (compact), all four charts from 140 columns on.
SIZES = [pytest.param((80, 24), id="80x24"), pytest.param((120, 40), id="120x40"),
         pytest.param((160, 45), id="160x45")]


@pytest.mark.parametrize("size", SIZES)
def test_dashboard_finished_at(snap_compare, size):
    assert snap_compare(AshemApp(ReplaySource(make_events())), terminal_size=size)


@pytest.mark.parametrize("size", SIZES)
def test_dashboard_mid_run_at(snap_compare, size):
    """Stage 2, epoch 4 half done: the progress bar, a running step, routing per epoch."""
    events = until(make_events(), predicate=lambda e: e.kind == "BatchProgress"
                   and e.stage == 2 and e.epoch == 4 and e.batch == 256)
    app = AshemApp(ControlledSource(FakeControl(), events))
    assert snap_compare(app, terminal_size=size)


@pytest.mark.parametrize("size", SIZES)
def test_mining_transition_at(snap_compare, size):
    app = AshemApp(ControlledSource(FakeControl()))

    async def hold(pilot):
        app.feed(until(make_events(), boundary="mining-1"))  # pops the screen up
        await pilot.pause()

    assert snap_compare(app, terminal_size=size, run_before=hold)
