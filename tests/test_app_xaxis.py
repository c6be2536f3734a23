"""The dashboard's charts against compute: the PPL charts' x-axis (x cycles epoch, tokens
trained, wall time, training MACs; older logs stay per epoch, saying so), and the confidence
histogram on a log axis (the engine's log-spaced bins; l toggles it, on the dashboard and at a
held mining transition)."""
from __future__ import annotations

from dataclasses import replace

from app_events import FakeControl, chart_title, make_events, until
from ashem_app.app import AshemApp
from ashem_app.screens.inspect import InspectScreen
from ashem_app.sources import ControlledSource, ReplaySource
from ashem_app.widgets.charts import (X_AXES, Charts, ConfidenceChart, HardPplChart, PplChart,
                                      axis_ticks, next_x_axis, si_tick, time_labels,
                                      x_axis_named)
from ashem_engine.events import EpochEnded, ThresholdComputed

WIDE = (160, 45)
TOKENS_PER_EPOCH = {1: 327_680, 2: 32_768}
MACS_PER_EPOCH = {1: 3.1e12, 2: 0.42e12}


def with_run_fields(events: list) -> list:
    """The fixture run as the engine now logs it: each EpochEnded with the run's tokens, MACs
    and clock so far (made up here, as the rest of the fixture)."""
    out, tokens, macs = [], 0, 0.0
    for e in events:
        if isinstance(e, EpochEnded):
            tokens += TOKENS_PER_EPOCH[e.stage]
            macs += MACS_PER_EPOCH[e.stage]
            e = replace(e, training_macs=MACS_PER_EPOCH[e.stage], tokens_trained=tokens,
                        run_training_macs=macs, run_seconds=e.t + 100.0)
        out.append(e)
    return out


def epochs_in(events: list) -> list:
    return [e for e in events if isinstance(e, EpochEnded)]


# -- the x-axis ------------------------------------------------------------------------------
def test_the_axes_cycle_and_wrap():
    names = [a.name for a in X_AXES]
    assert names == ["epoch", "tokens", "time", "macs"]
    assert [next_x_axis(n) for n in names] == ["tokens", "time", "macs", "epoch"]
    assert next_x_axis("no such axis") == "epoch"
    assert x_axis_named("macs").field == "run_training_macs"


def test_ticks_are_round_values_in_readable_units():
    assert si_tick(4.2e12) == "4.2T" and si_tick(1.5e6) == "1.5M" and si_tick(2e15) == "2P"
    assert time_labels([0, 45]) == ["0s", "45s"]
    assert time_labels([0, 720, 5400]) == ["0min", "12min", "90min"]  # one unit per axis
    assert time_labels([3600, 5400, 14400]) == ["1h", "1.5h", "4h"]
    ticks, labels = axis_ticks(0.0, 7 * 3600.0, x_axis_named("time"))
    assert ticks == [0, 7200, 14400, 21600] and labels == ["0h", "2h", "4h", "6h"]
    ticks, labels = axis_ticks(3.1e12, 8.9e12, x_axis_named("macs"))
    assert labels == ["4T", "6T", "8T"]
    assert axis_ticks(5.0, 5.0, x_axis_named("tokens")) == ([5.0], ["5"])


async def test_x_cycles_every_axis_with_its_label_and_the_events_values():
    events = with_run_fields(make_events())
    epochs = epochs_in(events)
    app = AshemApp(ReplaySource(events))
    async with app.run_test(size=WIDE) as pilot:
        await pilot.pause()
        ppl, hard = app.dashboard.query_one(PplChart), app.dashboard.query_one(HardPplChart)
        assert chart_title(ppl).startswith("train / val PPL per epoch")
        assert [x for x, _ in ppl.series["val"]] == list(range(1, len(epochs) + 1))
        for name, field, title, labels in (
                ("tokens", "tokens_trained", "tokens trained", ["500k", "1M", "1.5M"]),
                ("time", "run_seconds", "wall time", ["10min", "20min", "30min"]),
                ("macs", "run_training_macs", "training MACs", ["5T", "10T", "15T"])):
            await pilot.press("x")
            await pilot.pause()
            assert app.dashboard.query_one(Charts).x_axis == name
            assert ppl.axis.name == name and f"vs {title}" in chart_title(ppl)
            assert [x for x, _ in ppl.series["val"]] == [getattr(e, field) for e in epochs]
            assert [v for _, v in ppl.series["val"]] == [e.val_ppl for e in epochs]
            assert ppl.x_ticks[1] == labels
            stage_two = [e for e in epochs if e.stage == 2]
            assert [x for x, _ in hard.series["stage 2"]] == [getattr(e, field)
                                                              for e in stage_two]
            assert f"hard PPL vs {x_axis_named(name).label}" in chart_title(hard)
        await pilot.press("x")  # wraps to the epoch
        await pilot.pause()
        assert ppl.axis.name == "epoch" and chart_title(ppl).startswith("train / val PPL per")
        assert [x for x, _ in hard.series["stage 2"]] == [e.epoch for e in stage_two]


async def test_stage_boundaries_stay_at_the_stage_end_on_every_axis():
    events = with_run_fields(make_events())
    last_of_stage_one = [e for e in epochs_in(events) if e.stage == 1][-1]
    app = AshemApp(ReplaySource(events))
    async with app.run_test(size=WIDE) as pilot:
        await pilot.pause()
        ppl = app.dashboard.query_one(PplChart)
        ppl.render()
        assert ppl.boundaries == [4.5]  # between epoch 4 of stage 1 and epoch 1 of stage 2
        for field in ("tokens_trained", "run_seconds", "run_training_macs"):
            await pilot.press("x")
            await pilot.pause()
            ppl.render()
            assert ppl.boundaries == [getattr(last_of_stage_one, field)]


async def test_an_older_log_stays_per_epoch_and_says_so():
    app = AshemApp(ReplaySource(make_events()))  # EpochEnded without the run fields
    async with app.run_test(size=WIDE) as pilot:
        await pilot.pause()
        ppl = app.dashboard.query_one(PplChart)
        for label in ("tokens trained", "wall time", "training MACs"):
            await pilot.press("x")
            await pilot.pause()
            assert ppl.axis.name == "epoch"
            assert f"per epoch (no {label} in this log)" in chart_title(ppl)
            assert ppl.x_ticks[1][:5] == ["1", "2", "3", "4", "S2"]


async def test_a_log_with_the_fields_on_some_epochs_only_stays_per_epoch():
    """A run resumed with this version after an older one: the early epochs lack them."""
    events = with_run_fields(make_events())
    first = next(i for i, e in enumerate(events) if isinstance(e, EpochEnded))
    events[first] = replace(events[first], run_training_macs=None)
    app = AshemApp(ReplaySource(events))
    async with app.run_test(size=WIDE) as pilot:
        await pilot.pause()
        for _ in range(3):
            await pilot.press("x")
        await pilot.pause()
        assert app.dashboard.query_one(PplChart).axis.name == "epoch"


async def test_x_is_the_dashboards_and_leaves_the_inspection_screen_alone():
    app = AshemApp(ReplaySource(with_run_fields(make_events())))
    async with app.run_test(size=WIDE) as pilot:
        await pilot.pause()
        await pilot.press("1")
        await pilot.pause()
        assert isinstance(app.screen, InspectScreen)
        await pilot.press("x")
        await pilot.pause()
        assert app.dashboard.query_one(Charts).x_axis == "epoch"


# -- the confidence histogram on a log axis ------------------------------------------------------
LOG_EDGES = [round(0.00038 * (0.156 / 0.00038) ** (i / 20), 8) for i in range(21)]
LOG_COUNTS = [900, 1400, 2100, 2900, 3600, 4300, 4800, 5100, 5200, 5000, 4600, 4100, 3600,
              3000, 2500, 2000, 1500, 1100, 700, 400]


def with_log_bins(events: list, edges=LOG_EDGES, counts=LOG_COUNTS, threshold=0.0014) -> list:
    """The fixture's mining as a weak model's: confidences over 0.00038 to 0.156, nearly every
    token in the first two equal bins, and the engine's log-spaced bins."""
    zoom_edges = [round(edges[0] + (edges[-1] - edges[0]) * i / 20, 8) for i in range(21)]
    zoom_counts = [48_000, 10_000] + [500] * 18
    return [replace(e, threshold=threshold, zoom_edges=zoom_edges, zoom_counts=zoom_counts,
                    log_edges=edges, log_counts=counts)
            if isinstance(e, ThresholdComputed) else e for e in events]


async def test_a_wide_span_is_on_a_log_axis_with_the_threshold_marked_and_l_toggles_it():
    app = AshemApp(ReplaySource(with_log_bins(make_events())))
    async with app.run_test(size=WIDE) as pilot:
        await pilot.pause()
        chart = app.dashboard.query_one(ConfidenceChart)
        chart.render()
        assert chart.log_x and chart.bin_kind == "log" and chart.bins == (LOG_EDGES, LOG_COUNTS)
        assert chart_title(chart).endswith("log x")
        ticks, labels = chart.x_ticks
        assert "thr 0.0014" in labels and "0.00038" in labels and "0.156" in labels
        assert "0.01" in labels  # a power of ten between
        assert sorted(ticks) == ticks and ticks[0] < 0  # log10 positions
        await pilot.press("l")  # the PPL chart is the selected one: log y -> linear, all
        await pilot.pause()
        chart.render()
        assert not chart.log_x and chart.bin_kind == "zoom"
        assert not chart_title(chart).endswith("log x")
        await pilot.press("l")
        await pilot.pause()
        chart.render()
        assert chart.log_x and chart.bin_kind == "log"


async def test_on_a_narrow_screen_l_toggles_the_histogram_shown():
    app = AshemApp(ReplaySource(with_log_bins(make_events())))
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause()
        await pilot.press("n", "n")  # the confidence histogram
        await pilot.pause()
        chart = app.dashboard.query_one(ConfidenceChart)
        chart.render()
        assert chart.log_x
        await pilot.press("l")
        await pilot.pause()
        chart.render()
        assert not chart.log_x


async def test_a_narrow_span_and_an_older_log_stay_linear_and_l_puts_the_bins_on_log():
    narrow = [0.05 + 0.01 * i for i in range(21)]  # 0.05 to 0.25: 5x
    for events, kind in ((with_log_bins(make_events(), narrow, LOG_COUNTS, 0.1), "log"),
                         (make_events(), "zoom")):  # an older log: no log-spaced bins
        app = AshemApp(ReplaySource(events))
        async with app.run_test(size=(120, 40)) as pilot:
            await pilot.pause()
            await pilot.press("n", "n")
            await pilot.pause()
            chart = app.dashboard.query_one(ConfidenceChart)
            chart.render()
            assert not chart.log_x
            await pilot.press("l")
            await pilot.pause()
            chart.render()
            assert chart.log_x and chart.bin_kind == kind
            edges, _ = chart.bins
            assert chart.x_ticks[0][0] == min(chart.x_ticks[0]) and edges[0] > 0
            if kind == "zoom":  # equal bins, each drawn over its own range: said so
                assert chart_title(chart).endswith("log x, equal bins")


async def test_l_works_at_a_held_mining_transition():
    events = with_log_bins(make_events())
    app = AshemApp(ControlledSource(FakeControl()))
    async with app.run_test(size=(120, 40)) as pilot:
        app.feed(until(events, boundary="mining-1"))
        await pilot.pause()
        screen = app.screen
        assert isinstance(screen, InspectScreen) and screen.steerable
        chart = screen.query_one(ConfidenceChart)
        chart.render()
        assert chart.log_x and "thr 0.0014" in chart.x_ticks[1]
        await pilot.press("l")
        await pilot.pause()
        chart.render()
        assert not chart.log_x and chart.bin_kind == "zoom"
        await pilot.press("l")
        await pilot.pause()
        chart.render()
        assert chart.log_x
        assert app.dashboard.query_one(Charts).log_x is None  # the dashboard's own choice


def test_snapshot_of_a_weak_models_mining_on_a_log_axis(snap_compare):
    events = with_log_bins(make_events())
    app = AshemApp(ControlledSource(FakeControl()))

    async def hold(pilot):
        app.feed(until(events, boundary="mining-1"))
        await pilot.pause()

    assert snap_compare(app, terminal_size=(100, 30), run_before=hold)
