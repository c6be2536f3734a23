"""Snapshot tests (pytest-textual-snapshot): the dashboard and the transition screen from
the replay fixture, at fixed terminal sizes. Update with `pytest --snapshot-update`."""
from __future__ import annotations

from app_events import FakeControl, make_events, until

from ashem_app.app import AshemApp
from ashem_app.sources import AttachedSource, ReplaySource


def test_dashboard_finished_run(snap_compare):
    assert snap_compare(AshemApp(ReplaySource(make_events())), terminal_size=(100, 30))


def test_dashboard_wide(snap_compare):
    assert snap_compare(AshemApp(ReplaySource(make_events())), terminal_size=(160, 45))


def test_dashboard_mid_stage_two(snap_compare):
    events = until(make_events(), predicate=lambda e: e.kind == "EpochEnded" and e.stage == 2
                   and e.epoch == 3)
    app = AshemApp(AttachedSource(FakeControl(), events))
    assert snap_compare(app, terminal_size=(100, 30))


def test_transition_screen_at_mining(snap_compare):
    app = AshemApp(AttachedSource(FakeControl()))

    async def hold(pilot):
        app.feed(until(make_events(), boundary="mining-1"))  # pops the screen up
        await pilot.pause()

    assert snap_compare(app, terminal_size=(100, 30), run_before=hold)


def test_help_screen(snap_compare):
    assert snap_compare(AshemApp(ReplaySource(make_events())), terminal_size=(100, 30),
                        press=["question_mark"])


def test_dashboard_classic_80_by_24(snap_compare):
    """The compact layout (< 100 columns): short timeline figures, one line per card, the
    footer's essential keys."""
    assert snap_compare(AshemApp(ReplaySource(make_events())), terminal_size=(80, 24))
