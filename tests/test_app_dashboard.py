"""Pilot tests of the dashboard, driven by replayed event lists (no engine thread, except a
fake runner that only emits events)."""
from __future__ import annotations

import asyncio
import json
import threading
from dataclasses import asdict
from types import SimpleNamespace

from app_events import (
    FakeControl, RUN_DIR, cancelled_after, chart_title, count_calls, make_events, plain,
    until, write_events,
)

from ashem_app.app import AshemApp
from ashem_app.sources import ControlledSource, FollowSource, LiveSource, ReplaySource
from ashem_app.state import reduce_all
from ashem_app.screens.confirm import ConfirmScreen
from ashem_app.screens.help import HelpScreen
from ashem_app.screens.inspect import InspectScreen
from ashem_app.widgets.cards import MetricCards
from ashem_app.widgets.charts import (Chart, Charts, ConfidenceChart, HardPplChart, PplChart,
                                      confidence_bins, log_axis)
from ashem_app.widgets.eventlog import EventLog
from ashem_app.widgets.timeline import StepBox
from ashem_engine.events import BatchProgress, Paused, Resumed, ThresholdComputed

SIZE = (100, 30)


def text(app: AshemApp, selector: str) -> str:
    return plain(app.screen.query_one(selector))


def log_text(app: AshemApp) -> str:
    """The log panel's text, wrapped lines joined again."""
    return "".join(strip.text for strip in app.dashboard.query_one(EventLog).lines)


def boxes(app: AshemApp) -> dict[str, StepBox]:
    return {b.step.id: b for b in app.dashboard.query(StepBox)}


def mid_stage1():
    return until(make_events(), predicate=lambda e: isinstance(e, BatchProgress)
                 and e.stage == 1 and e.epoch == 2 and e.batch == 80)


async def until_true(pilot, condition, timeout: float = 5.0) -> None:
    for _ in range(int(timeout / 0.02)):
        if condition():
            return
        await asyncio.sleep(0.02)
    await pilot.pause()
    assert condition()


async def test_every_panel_shows_the_figures_of_a_finished_run():
    app = AshemApp(ReplaySource(make_events()))
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        header = text(app, "#header-left") + text(app, "#header-right")
        for part in ("reference", "cpu", "×2", "REPLAY", "30:52", "FINISHED"):
            assert part in header
        b = boxes(app)
        assert list(b) == ["stage-1", "mining-1", "stage-2", "evaluation"]
        assert all(box.has_class("-done") for box in b.values())
        assert "985.59" in plain(b["stage-1"]) and "0.1596" in plain(b["mining-1"])
        assert "776.71" in plain(b["evaluation"])
        cards = {c: text(app, f"#card-{c}") for c in
                 ("val-ppl", "val-acc", "hard-ppl", "threshold", "hard-tokens", "routing",
                  "cost")}
        assert "781.24" in cards["val-ppl"] and "best 776.71" in cards["val-ppl"]
        assert "15.75 %" in cards["val-acc"] and "15.80 %" in cards["val-acc"]
        assert "675.27" in cards["hard-ppl"] and "2,854.97" in cards["hard-ppl"]
        assert "0.1596" in cards["threshold"]
        assert "32,768 / 65,536" in cards["hard-tokens"] and "0.0653" in cards["hard-tokens"]
        assert "72.6 % / 27.4 %" in cards["routing"]
        assert "63.72 %" in cards["cost"] and "123.4 %" in cards["cost"]
        assert "Stage 2" in text(app, "#progress-epoch") and "7/50" in text(app,
                                                                             "#progress-epoch")
        stats = text(app, "#progress-stats")
        assert "512/512" in stats and "1,507" in stats and "tok/s" in stats
        assert "finished in 30:52" in text(app, "#progress-status")
        log = log_text(app)
        assert "threshold 0.1596" in log and "run finished" in log
        ppl_title = chart_title(app.dashboard.query_one(PplChart))
        assert ppl_title == "train / val PPL per epoch · log y"
        # replay: pause/continue disabled
        assert app.check_action("toggle_pause", ()) is None
        await pilot.press("space")
        assert app.view.status == "finished"


async def test_progress_during_a_live_epoch():
    app = AshemApp(ControlledSource(FakeControl()))
    async with app.run_test(size=SIZE) as pilot:
        app.feed(mid_stage1())
        await pilot.pause()
        assert "1/50" not in text(app, "#progress-epoch")
        assert "2/50" in text(app, "#progress-epoch")
        stats = text(app, "#progress-stats")
        assert "80/160" in stats and "1,646 tok/s" in stats and "ETA 1:40" in stats
        assert "RUNNING" in text(app, "#header-right")
        b = boxes(app)
        assert b["stage-1"].has_class("-running") and "ep 1/50" in plain(b["stage-1"])
        assert b["mining-1"].has_class("-pending")


async def test_batch_progress_is_batched_and_never_redraws_the_charts(monkeypatch):
    cards = count_calls(monkeypatch, MetricCards, "show")
    plots = count_calls(monkeypatch, PplChart, "draw")
    app = AshemApp(ControlledSource(FakeControl()), refresh_interval=0.05)
    async with app.run_test(size=SIZE) as pilot:
        app.feed(until(make_events(), kind="EpochEnded"))
        await pilot.pause()
        redraws, draws = len(cards), len(plots)
        assert draws >= 1

        def engine():  # BatchProgress from another thread, as the engine sends them
            for b in range(1, 161):
                app.ingest(BatchProgress(stage=1, epoch=2, batch=b, batches=160, loss=5.0,
                                         tokens_per_s=1000.0 + b, eta_s=1.0, t=100.0 + b))

        thread = threading.Thread(target=engine)
        thread.start()
        thread.join()
        await until_true(pilot, lambda: "1,160 tok/s" in text(app, "#progress-stats"))
        assert len(cards) == redraws  # no structural redraw
        assert len(plots) == draws  # no plot built again
        assert app.view.events_seen == len(until(make_events(), kind="EpochEnded")) + 160


async def test_pause_and_resume_call_the_control_and_show_where():
    control = FakeControl()
    app = AshemApp(ControlledSource(control))
    async with app.run_test(size=SIZE) as pilot:
        app.feed(mid_stage1())
        await pilot.press("space")
        assert control.calls == ["pause"]
        assert "pausing" in text(app, "#progress-status")
        app.feed([Paused(where="stage 1, epoch 2, batch 81/160", reason="user", t=200.0)])
        await pilot.pause()
        assert "paused at stage 1, epoch 2, batch 81/160" in text(app, "#progress-status")
        assert "PAUSED" in text(app, "#header-right")
        assert app.screen is app.dashboard  # a user pause opens no screen
        await pilot.press("space")
        assert control.calls == ["pause", "resume"]
        app.feed([Resumed(where="stage 1, epoch 2, batch 81/160", t=210.0)])
        await pilot.pause()
        assert "RUNNING" in text(app, "#header-right")


async def test_keymap_rebinds_by_binding_id():
    control = FakeControl()
    app = AshemApp(ControlledSource(control))
    async with app.run_test(size=SIZE) as pilot:
        app.feed(mid_stage1())
        app.set_keymap({"ashem.pause": "p"})
        await pilot.press("p")
        assert control.calls == ["pause"]


async def test_transition_screens_open_on_pause_at_and_their_keys_work():
    control = FakeControl()
    events = make_events()
    app = AshemApp(ControlledSource(control))
    async with app.run_test(size=SIZE) as pilot:
        app.feed(until(events, boundary="stage-1"))
        await pilot.pause()
        screen = app.screen
        assert isinstance(screen, InspectScreen) and screen.step_id == "stage-1"
        summary = text(app, "#stage-summary")
        assert "best epoch" in summary and "985.59" in summary and "16.17 %" in summary
        assert "stopped early" in summary and "yes" in summary
        assert "1,043.10" in text(app, "#stage-epochs")
        assert "holding at boundary stage-1" in text(app, "#inspect-status")
        # back: the run stays held
        await pilot.press("escape")
        assert app.screen is app.dashboard and control.calls == []
        assert app.view.held_at == "stage-1"
        # reopen from the timeline by number, then continue
        await pilot.press("1")
        assert isinstance(app.screen, InspectScreen) and app.screen.step_id == "stage-1"
        await pilot.press("c")
        assert control.calls == ["resume"] and app.screen is app.dashboard

        n = len(until(events, boundary="stage-1"))
        app.feed(until(events, boundary="mining-1")[n:])
        await pilot.pause()
        screen = app.screen
        assert isinstance(screen, InspectScreen) and screen.step_id == "mining-1"
        figures = text(app, "#hard-figures")
        assert "0.1596" in figures and "32,768 / 65,536" in figures and "0.0653" in figures
        assert "2,854.97" in figures
        words = text(app, "#top-words")
        assert "the" in words and "2,113" in words
        examples = text(app, "#hard-examples")
        assert "[japan]" in examples and "released in" in examples and "0.0412" in examples
        assert chart_title(screen.query_one("#inspect-confidence")) == \
            "confidence at layer 2 · 65,536 tokens"
        # ← goes to the previous step's screen
        await pilot.press("left")
        assert isinstance(app.screen, InspectScreen) and app.screen.step_id == "stage-1"
        await pilot.press("right")
        assert app.screen.step_id == "mining-1"
        # abort: asks, cancels the run, keeps the app
        await pilot.press("a")
        assert isinstance(app.screen, ConfirmScreen)
        await pilot.press("y")
        assert control.calls == ["resume", "cancel"]
        assert app.screen is app.dashboard and app.is_running
        app.feed(cancelled_after(until(events, boundary="mining-1"))[-1:])
        await pilot.pause()
        assert app.view.status == "cancelled" and "CANCELLED" in text(app, "#header-right")


async def test_evaluation_screen_and_clicking_the_timeline():
    app = AshemApp(ReplaySource(make_events()))
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        assert app.screen is app.dashboard  # replay: nothing pops up by itself
        await pilot.click(".step-evaluation")
        screen = app.screen
        assert isinstance(screen, InspectScreen) and screen.step_id == "evaluation"
        ev = text(app, "#evaluation")
        for part in ("15.80 %", "776.71", "exit @ layer 2", "72.6 %", "63.72 %", "123.4 %"):
            assert part in ev
        assert app.screen.check_action("continue_run", ()) is None  # replay: disabled
        await pilot.press("c")
        assert isinstance(app.screen, InspectScreen)
        await pilot.press("escape", "i")
        assert app.screen.step_id == "mining-1"  # the latest transition


async def test_quit_while_running_asks_then_cancels_and_exits():
    control = FakeControl()
    app = AshemApp(ControlledSource(control))
    async with app.run_test(size=SIZE) as pilot:
        app.feed(mid_stage1())
        await pilot.press("q")
        assert isinstance(app.screen, ConfirmScreen)
        await pilot.press("n")
        assert app.screen is app.dashboard and control.calls == []
        await pilot.press("ctrl+q")  # Textual's own quit key asks too
        assert isinstance(app.screen, ConfirmScreen)
        await pilot.press("escape")
        await pilot.press("q", "y")
        await pilot.pause()
    assert control.calls == ["cancel"]
    assert app.return_code == 130  # the run was cancelled: the engine's exit-code rule


async def test_quit_from_a_held_transition_screen():
    control = FakeControl()
    app = AshemApp(ControlledSource(control))
    async with app.run_test(size=SIZE) as pilot:
        app.feed(until(make_events(), boundary="mining-1"))
        await pilot.pause()
        assert isinstance(app.screen, InspectScreen)
        await pilot.press("q", "y")
        await pilot.pause()
    assert control.calls == ["cancel"]


async def test_quit_after_the_run_ended_does_not_ask():
    app = AshemApp(ControlledSource(FakeControl(), make_events()))
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("q")
        await pilot.pause()
    assert app.return_code == 0 and app.source.control.calls == []


async def test_engine_failure_is_shown_and_the_app_stays_up():
    control = FakeControl()
    app = AshemApp(ControlledSource(control))
    async with app.run_test(size=SIZE) as pilot:
        app.feed(make_events(fail_at="stage-2"))
        await pilot.pause()
        assert app.view.status == "failed" and "FAILED" in text(app, "#header-right")
        assert "NaN" in text(app, "#progress-status")
        assert "run FAILED (numeric)" in log_text(app)
        assert any("NaN" in n.message for n in app._notifications)
        assert boxes(app)["stage-2"].has_class("-failed")
        await pilot.press("q")  # no run to cancel: quits at once
    assert control.calls == [] and app.return_code == 1


async def test_exception_escaping_the_worker_becomes_a_failure():
    def boom(settings, sinks=(), control=None):
        sinks[0](make_events()[0])
        raise RuntimeError("boom in the engine")

    settings = SimpleNamespace(run=SimpleNamespace(pause_at=()))
    app = AshemApp(LiveSource(settings, runner=boom))
    async with app.run_test(size=SIZE) as pilot:
        await until_true(pilot, lambda: app.view.status == "failed")
        assert app.view.failed.error_kind == "internal"
        assert "boom in the engine" in app.view.failed.message
        assert "boom in the engine" in log_text(app)
        assert any("boom" in n.message for n in app._notifications)
        assert app.is_running
        await pilot.press("q")
    assert app.return_code == 1


async def test_a_resumed_engine_that_dies_silently_is_a_failure_despite_its_history():
    """The history (an earlier attempt, cancelled) ends in a final event; the resumed
    engine's own end decides: it raised before sending any event, so the run failed."""
    def dies(settings, sinks=(), control=None):
        raise RuntimeError("resume died")

    settings = SimpleNamespace(run=SimpleNamespace(pause_at=()))
    history = cancelled_after(until(make_events(), boundary="mining-1"))
    app = AshemApp(LiveSource(settings, runner=dies, history=history))
    async with app.run_test(size=SIZE) as pilot:
        await until_true(pilot, lambda: app.view.status == "failed")
        assert "resume died" in app.view.failed.message
        assert len(app.view.stage_epochs(1)) == 4  # the history is shown
        assert not any("cancelled" in n.message for n in app._notifications)
        await pilot.press("q")
    assert app.return_code == 1


async def test_engine_thread_events_reach_the_ui():
    def fake_engine(settings, sinks=(), control=None):
        for event in make_events(hold=False):
            sinks[0](event)
        return SimpleNamespace(status="finished")

    settings = SimpleNamespace(run=SimpleNamespace(pause_at=()))
    app = AshemApp(LiveSource(settings, runner=fake_engine))
    async with app.run_test(size=SIZE) as pilot:
        await until_true(pilot, lambda: app.source.ended and app.view.terminal)
        assert app.view.status == "finished" and app.view.evaluation.ppl == 776.71
        assert not app.run_active
        await pilot.press("q")


async def test_replay_follows_a_growing_file_and_never_pops_up(tmp_path):
    events = make_events()
    part = until(events, boundary="mining-1")
    path = write_events(part, tmp_path / "run" / "events.jsonl", torn_tail='{"kind": "Res')
    app = AshemApp(FollowSource(path, poll_interval=0.05))
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        assert app.view.events_seen == len(part) and app.view.held_at == "mining-1"
        assert app.screen is app.dashboard and not app.source.live
        with open(path, "w") as f:  # the writer completes its line and goes on
            for e in events:
                f.write(json.dumps(e.to_dict()) + "\n")
        # rewrite == same prefix; the follower continues from its offset
        await until_true(pilot, lambda: app.view.status == "finished")
        assert app.screen is app.dashboard
        assert app.view.evaluation is not None


async def test_export_screenshot_help_log_scale_and_charts(tmp_path):
    app = AshemApp(ReplaySource(make_events()), output_dir=tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        await pilot.press("e")
        rows = (tmp_path / "reference-metrics.csv").read_text().splitlines()
        assert len(rows) == 12 and rows[0].startswith("stage,epoch,train_ppl")
        doc = json.loads((tmp_path / "reference-metrics.json").read_text())
        assert doc["run"]["run_dir"] == RUN_DIR
        await pilot.press("s")
        assert len(list(tmp_path.glob("*.svg"))) == 1
        assert any(".svg" in n.message for n in app._notifications)
        charts = app.dashboard.query_one(Charts)
        ppl = app.dashboard.query_one(PplChart)
        assert chart_title(ppl) == "train / val PPL per epoch · log y"  # log by default
        await pilot.press("l")
        await pilot.pause()
        assert not charts.log_y and chart_title(ppl) == "train / val PPL per epoch"
        await pilot.press("n")
        assert charts.selected == 1
        shown = [c.id for c in app.dashboard.query(Chart) if c.styles.display != "none"]
        assert shown == ["chart-hard"]  # narrow: one chart at a time
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        assert "Pause the run at the next batch boundary" in text(app, "#help-table")
        await pilot.press("escape")
        assert app.screen is app.dashboard


async def test_wide_terminal_shows_all_charts():
    app = AshemApp(ReplaySource(make_events()))
    async with app.run_test(size=(160, 45)) as pilot:
        await pilot.pause()
        assert app.dashboard.has_class("-wide")
        shown = [c for c in app.dashboard.query(Chart) if c.styles.display != "none"]
        assert len(shown) == 4 and all(c.size.height >= 8 for c in shown)
        assert [chart_title(c) for c in shown] == [
            "train / val PPL per epoch · log y",
            "hard PPL per epoch · ── mined 2,854.97",  # 675 … 2,855: under 10×, linear
            "confidence at layer 2 · 65,536 tokens", "final routing 72.6 % / 27.4 %"]


async def test_command_palette_runs_registry_actions(tmp_path):
    app = AshemApp(ReplaySource(make_events()), output_dir=tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("ctrl+p")
        await pilot.press(*"export")
        await pilot.pause(0.2)
        await pilot.press("enter")
        await pilot.pause()
        assert (tmp_path / "reference-metrics.csv").exists()


async def test_a_startup_notice_is_shown_in_the_app():
    """`ashem` without a settings file says in the app, too, that the defaults are in use."""
    app = AshemApp(ReplaySource([]), notice="using the built-in defaults")
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause()
        assert any("built-in defaults" in n.message for n in app._notifications)


def test_ppl_axis_labels_are_round_values_on_the_log_scale():
    from ashem_app.widgets.charts import _log_ticks

    ticks, labels = _log_ticks([33_712.0, 2_900.0, 310.0])  # epoch 1, then 300-3,000
    assert labels == ["500", "1k", "2k", "5k", "10k", "20k"]
    assert all(a < b for a, b in zip(ticks, ticks[1:]))
    _, narrow = _log_ticks([776.71, 850.0])  # no round value inside: even steps
    assert narrow[0] == "777" and narrow[-1] == "850" and len(narrow) == 5


def screen_lines(app: AshemApp) -> list[str]:
    """What the terminal shows, line by line (as in an SVG screenshot, without styles)."""
    import io

    from rich.console import Console

    width, height = app.size
    console = Console(width=width, height=height, file=io.StringIO(), record=True,
                      force_terminal=True, color_system="truecolor", legacy_windows=False)
    console.print(app.screen._compositor.render_update(full=True))
    return console.export_text().splitlines()


async def test_classic_80_by_24_terminal_shows_every_figure_whole():
    app = AshemApp(ReplaySource(make_events()))
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        assert app.dashboard.has_class("-compact")
        lines = screen_lines(app)
        screen = "\n".join(lines)
        for title in ("1 ✓ Stage 1", "2 ✓ Mining", "3 ✓ Stage 2", "4 ✓ Evaluation"):
            assert title in screen
        timeline = lines[2]
        for figure in ("best 985.59", "0.1596 · 32.8k", "best 776.71", "776.71 · 15.8 %"):
            assert figure in timeline
        assert "…" not in "".join(lines[:5])  # no figure cut with an ellipsis
        assert "REPLAY" in lines[0] and "elapsed 30:52" in lines[0] and "FINISHED" in lines[0]
        assert "━" * 20 in lines[4] and "%" not in lines[4]  # a bar of 20 cells at least
        assert "512/512" in lines[4] and "loss 6.580" in lines[4]
        for card in ("Val PPL   781.24  best 776.71 s2 e4",
                     "Hard tok  32,768 / 65,536  50.0 % · conf 0.0653",
                     "Shal/deep 72.6 % / 27.4 %  final · validation",
                     "Cost      63.72 %  honest 123.4 %"):
            assert card in screen
        assert chart_title(app.dashboard.query_one(PplChart)) == "train / val PPL · log y"
        footer = lines[-1]
        for key in ("space Pause/Resume", "i Inspect", "? Help", "q Quit"):
            assert key in footer
        await pilot.resize_terminal(100, 30)  # back to the regular layout
        await pilot.pause()
        assert not app.dashboard.has_class("-compact")
        assert "best PPL 985.59" in plain(boxes(app)["stage-1"])


def test_ppl_axis_is_log_where_the_values_span_more_than_ten_times():
    assert log_axis(None, [3208.8, 298.6]) and not log_axis(None, [1870.1, 675.3])
    assert log_axis(True, [2.0, 3.0]) and not log_axis(False, [1.0, 100.0])
    assert not log_axis(None, [])


async def test_l_switches_both_ppl_charts_from_their_default_axis():
    app = AshemApp(ReplaySource(make_events()))
    async with app.run_test(size=(160, 45)) as pilot:
        await pilot.pause()
        charts = app.dashboard.query_one(Charts)
        ppl, hard = app.dashboard.query_one(PplChart), app.dashboard.query_one(HardPplChart)
        assert charts.log_y is None  # log for the PPLs (10.7×), linear for the hard PPLs
        assert chart_title(ppl).endswith("log y") and not chart_title(hard).endswith("log y")
        await pilot.press("l")
        await pilot.pause()
        assert charts.log_y is False and not chart_title(ppl).endswith("log y")
        await pilot.press("l")
        await pilot.pause()
        assert chart_title(ppl).endswith("log y") and chart_title(hard).endswith("log y")


def test_confidence_chart_uses_the_fitted_bins_and_old_logs_the_bins_on_0_1():
    th = next(e for e in make_events() if isinstance(e, ThresholdComputed))
    assert confidence_bins(th) == (th.zoom_edges, th.zoom_counts)
    assert th.zoom_edges[0] > 0 and th.zoom_edges[-1] < 1
    old = ThresholdComputed(**{**asdict(th), "zoom_edges": None, "zoom_counts": None})
    assert confidence_bins(old) == (th.histogram_edges, th.histogram_counts)


async def test_mining_screen_at_80_by_24_keeps_figures_whole_and_marks_the_threshold():
    app = AshemApp(ControlledSource(FakeControl()))
    async with app.run_test(size=(80, 24)) as pilot:
        app.feed(until(make_events(), boundary="mining-1"))
        await pilot.pause()
        assert isinstance(app.screen, InspectScreen) and app.screen.has_class("-compact")
        screen = "\n".join(screen_lines(app))
        for figure in ("trainable      4,600,448 / 4,600,448", "lr · patience  0.001 · 1",
                       "stopped early  yes", "thr 0.1596", "0.0021", "0.532",
                       "threshold         0.1596"):
            assert figure in screen
        assert "…" not in screen
        footer = screen_lines(app)[-1]
        for key in ("c Continue", "a Abort", "esc Back", "? Help", "q Quit"):
            assert key in footer


def test_confidence_chart_of_tall_fitted_bins_builds_in_milliseconds():
    """A real run's fitted bins (a weak model: most tokens in the first few bins) took
    plotext's bar fill 1.5 s of GIL on the UI thread; filled steps take a few ms."""
    import time

    from textual_plotext import PlotextPlot

    counts = [2595, 628, 134, 71, 78, 66, 83, 56, 37, 43] + [20] * 40
    edges = [0.000348 + i * 0.000367 for i in range(51)]
    th = ThresholdComputed(stage=1, exit_layer=2, threshold=0.00061, target_ratio=0.5,
                           split="validation", tokens=4096, histogram_edges=edges,
                           histogram_counts=counts, zoom_edges=edges, zoom_counts=counts)
    chart = ConfidenceChart()
    plot = PlotextPlot().plt
    plot.plotsize(79, 11)
    started = time.perf_counter()
    chart.draw(plot, reduce_all([th]))
    plot.build()
    assert time.perf_counter() - started < 0.3


def test_a_chart_renders_the_same_whatever_the_process_string_hashing():
    """plotext orders ticks by a set of strings; ashem makes that order the given one."""
    import os
    import subprocess
    import sys

    script = ("import ashem_app.widgets.charts\n"
              "from textual_plotext.plot import Plot\n"
              "p = Plot(); p.plotsize(34, 14); p._set_size(34, 14)\n"
              "p.plot([0.002, 0.01, 0.05], [2000, 500, 500]); p.xlim(0.002, 0.53)\n"
              "p.xticks([0.002, 0.16, 0.53], ['0.0021', 'thr 0.1596', '0.532'])\n"
              "p.yticks([0, 1000, 2000], ['0', '1k', '2k']); print(p.build())\n")
    seen = {subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                           env={**os.environ, "PYTHONHASHSEED": str(seed)}).stdout
            for seed in range(6)}
    assert len(seen) == 1 and next(iter(seen))
