"""The comparison screen (PPL against MACs per token, the Pareto frontier), the `c` key, and
`ashem --compare`. The sweeps are plain dicts built here and combined by
`ashem_engine.compare.combine`, the one authority on Pareto flags; no training."""
from __future__ import annotations

import json
import math
import sys
import time

import pytest
from app_events import chart_title, make_events, plain

from ashem_app import keys
from ashem_app.__main__ import main
from ashem_app.app import AshemApp
from ashem_app.comparison import CompareApp, comparison_of, load_sweeps
from ashem_app.screens.compare import NOTHING, PARETO_MARK, ComparisonScreen
from ashem_app.screens.help import help_table
from ashem_app.sources import ReplaySource
from ashem_app.state import reduce_all
from ashem_app.widgets.pareto import (FULL_TITLE, ZOOM_RULE, ZOOMED_TITLE, ParetoChart,
                                      hidden_by_zoom, zoom_top)
from ashem_engine.compare import combine
from ashem_engine.events import SweepComputed
from test_app_cli import ROOT, one_line_error
from test_app_process import Terminal
from test_engine_compare_study import write_study_of

SIZE = (100, 30)
PLAIN_MACS = 4_730_000.0  # MACs per token of the plain deepest model of the reference run


def point(quantile, ppl, macs, accuracy, deep, spec) -> dict:
    return {"quantile": quantile, "thresholds": [] if quantile is None else [quantile / 4],
            "ppl": ppl, "accuracy": accuracy, "exit_ratios": [1 - deep, deep],
            "deep_ratio": deep, "spec_cost": spec, "honest_cost": macs / PLAIN_MACS,
            "macs_per_token": macs, "pareto": False}


def sweep_series() -> list[dict]:
    """21 thresholds (quantile 0 … 1): PPL falls as more tokens go deep, then rises a little
    past 0.8, so the last four points are beaten by cheaper ones; plus the plain 4-layer
    model as a baseline (beaten too)."""
    points = []
    for i in range(21):
        q = i / 20
        ppl = round(770 + 130 * (1 - q) ** 2 + 100 * max(0.0, q - 0.8), 2)
        points.append(point(q, ppl, PLAIN_MACS * (0.55 + 0.5 * q), 0.150 + 0.008 * q, q,
                            0.5 + 0.5 * q))
    baseline = point(None, 790.0, PLAIN_MACS, 0.157, 1.0, 1.0)
    return [{"name": "confidence sweep", "kind": "sweep", "signal": "confidence",
             "points": points},
            {"name": "plain 4 layers", "kind": "baseline", "signal": None,
             "points": [baseline]}]


def sweep_event(t: float = 0.0) -> SweepComputed:
    return SweepComputed(split="validation", tokens=65_536, plain_macs_per_token=PLAIN_MACS,
                         series=sweep_series(), t=t)


def other_run(split: str = "validation") -> dict:
    """A second run: one point, cheaper than every point of the sweep (Pareto-optimal)."""
    return {"name": "scratch-2L", "split": split, "tokens": 65_536,
            "plain_macs_per_token": PLAIN_MACS / 2, "protocol": {},
            "series": [{"name": "plain 2 layers", "kind": "baseline", "signal": None,
                        "points": [point(None, 905.0, PLAIN_MACS / 2, 0.145, 1.0, 1.0)]}]}


def replay_with_sweep() -> list:
    """The fixture run with its SweepComputed just before RunFinished."""
    events = make_events()
    *head, finished = events
    return [*head, sweep_event(t=finished.t), finished]


def outlier_run() -> dict:
    """A third run far above the rest (PPL 2000, beaten by the cheap end of the sweep)."""
    return {"name": "outlier", "split": "validation", "tokens": 65_536,
            "plain_macs_per_token": PLAIN_MACS, "protocol": {},
            "series": [{"name": "bad model", "kind": "baseline", "signal": None,
                        "points": [point(None, 2000.0, PLAIN_MACS * 0.6, 0.1, 1.0, 1.0)]}]}


def reference_sweep() -> dict:
    return {"name": "reference", "split": "validation", "tokens": 65_536,
            "plain_macs_per_token": PLAIN_MACS, "series": sweep_series()}


def table_cells(screen: ComparisonScreen) -> list[list[str]]:
    table = screen.query_one("#compare-table")
    return [[c.plain for c in table.get_row_at(i)] for i in range(table.row_count)]


def expected_flags(sweeps: list[dict]) -> list[bool]:
    return [p["pareto"] for s in combine(sweeps)["series"] for p in s["points"]]


# -- state and keys ------------------------------------------------------------------------
def test_the_reducer_keeps_the_latest_sweep():
    view = reduce_all(make_events())
    assert view.sweep is None
    first, second = sweep_event(t=1.0), sweep_event(t=2.0)
    view = reduce_all([first, second], view)
    assert view.sweep is second and view.status == "finished"


def test_the_keys_are_registered_for_the_footer_help_and_palette():
    assert keys.by_id("ashem.compare").key == "c"
    assert keys.by_id("ashem.compare") in keys.palette_actions()
    assert "c" in [b.key for b in keys.bindings("app") if b.show]
    assert keys.by_id("ashem.compare-zoom").key == "z"
    assert "z" in [b.key for b in keys.bindings("compare") if b.show]
    assert [k for k, _ in keys.help_rows("compare")] == ["z", "v", "x", "l", "esc/q"]
    assert {"v", "x"} <= {b.key for b in keys.bindings("compare") if b.show}
    text = plain_table(help_table())
    assert "Comparison screen" in text and "Pareto frontier" in text


def plain_table(renderable) -> str:
    class Holder:
        content = renderable

    return plain(Holder())


def test_the_comparison_of_a_run_is_the_engines_combine():
    view = reduce_all(replay_with_sweep())
    comparison = comparison_of(view, [other_run()])
    expected = combine([reference_sweep(), other_run()])
    assert [s["label"] for s in comparison["series"]] == \
        ["reference · confidence sweep", "reference · plain 4 layers",
         "scratch-2L · plain 2 layers"]
    assert [[p["pareto"] for p in s["points"]] for s in comparison["series"]] == \
        [[p["pareto"] for p in s["points"]] for s in expected["series"]]
    assert comparison["series"][0]["protocol"] == {
        "mining_split": None, "evaluation_split": None, "inference": None,
        "contexts": [None], "freeze_head": [None]}  # the fixture's settings leave them out


# -- the screen ----------------------------------------------------------------------------
async def test_c_opens_the_comparison_of_a_replayed_run_and_escape_closes_it():
    app = AshemApp(ReplaySource(replay_with_sweep()), compare=[other_run()])
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        await pilot.press("c")
        screen = app.screen
        assert isinstance(screen, ComparisonScreen)
        rows = table_cells(screen)
        assert len(rows) == 21 + 1 + 1  # one row per point
        flags = expected_flags([reference_sweep(), other_run()])
        assert [r[-1] == PARETO_MARK for r in rows] == flags
        assert sum(flags) == 18  # quantiles 0 … 0.8 and the cheap 2-layer run
        assert rows[0][1:] == ["0.00", "900.00", "15.00", "0.0", "55.0", "50.0", "2.602",
                               PARETO_MARK]
        assert rows[21][0].endswith("reference · plain 4 layers") and rows[21][1] == "–"
        assert rows[21][-1] == ""
        assert not screen.query_one("#compare-warning").display
        assert not screen.query_one("#compare-empty").display
        chart = screen.query_one(ParetoChart)
        assert chart_title(chart) == f"{FULL_TITLE} · lower left is better"
        assert "3 series · 2 runs · validation" in plain(screen.query_one("#compare-summary"))
        await pilot.press("c")  # not again on top of itself
        assert len(app.screen_stack) == 2
        await pilot.press("escape")
        assert app.screen is app.dashboard
        await pilot.press("c")
        await pilot.press("q")  # q closes the comparison, it does not quit
        assert app.screen is app.dashboard and app.is_running


async def test_the_command_palette_opens_it():
    app = AshemApp(ReplaySource(replay_with_sweep()))
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("ctrl+p")
        await pilot.press(*"compare")
        await pilot.pause(0.2)
        await pilot.press("enter")
        await pilot.pause()
        assert isinstance(app.screen, ComparisonScreen)
        assert len(table_cells(app.screen)) == 22


async def test_different_splits_are_flagged():
    app = AshemApp(ReplaySource(replay_with_sweep()), compare=[other_run(split="test")])
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("c")
        warning = app.screen.query_one("#compare-warning")
        assert warning.display
        text = plain(warning)
        assert "different splits" in text
        assert "reference: validation" in text and "scratch-2L: test" in text


async def test_before_the_sweep_the_screen_says_what_is_needed_then_fills_in():
    events = make_events()
    app = AshemApp(ReplaySource(events[:-1]))  # evaluated, no sweep yet, not finished
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("c")
        screen = app.screen
        assert isinstance(screen, ComparisonScreen)
        assert screen.query_one("#compare-empty").display
        assert "evaluation.sweep_points > 0" in NOTHING and "ashem --compare" in NOTHING
        assert not screen.query_one("#compare-table").display
        app.feed([sweep_event(t=events[-1].t), events[-1]])  # the sweep arrives
        await pilot.pause()
        assert not screen.query_one("#compare-empty").display
        assert len(table_cells(screen)) == 22


async def test_before_the_sweep_the_other_runs_are_shown():
    app = AshemApp(ReplaySource(make_events()), compare=[other_run()])
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("c")
        rows = table_cells(app.screen)
        assert len(rows) == 1 and rows[0][-1] == PARETO_MARK


async def test_compare_app_has_only_the_comparison_and_q_quits():
    app = CompareApp(combine([reference_sweep(), other_run()]))
    async with app.run_test(size=SIZE) as pilot:
        assert isinstance(app.screen, ComparisonScreen)
        assert len(table_cells(app.screen)) == 23
        await pilot.press("q")
        await pilot.pause()
    assert app.return_code == 0


def chart_text(chart: ParetoChart) -> str:
    return chart.render().plain


def test_the_zoom_range_is_the_pareto_front_plus_a_tenth_of_the_lowest_ppl():
    comparison = combine([reference_sweep(), other_run(), outlier_run()])
    lowest = 770 + 130 * 0.2 ** 2  # quantile 0.8
    assert zoom_top(comparison) == pytest.approx(905.0 + 0.1 * lowest)  # 905: scratch-2L
    assert hidden_by_zoom(comparison) == 1
    assert hidden_by_zoom(combine([reference_sweep(), other_run()])) == 0


async def test_z_toggles_the_zoom_which_leaves_out_the_outlier_but_not_its_row():
    comparison = combine([reference_sweep(), other_run(), outlier_run()])
    flags = expected_flags([reference_sweep(), other_run(), outlier_run()])
    app = CompareApp(comparison)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        screen = app.screen
        chart = screen.query_one(ParetoChart)
        assert screen.zoomed  # the default: the zoom hides a point
        assert chart.hidden == 1
        low, high = chart.ylim
        assert low <= 775.2 and zoom_top(comparison) <= high < 2000.0
        assert chart.xlim[0] < PLAIN_MACS * 0.55 / 1e6 and chart.xlim[1] > PLAIN_MACS * 1.05 / 1e6
        text = chart_text(chart)
        assert ZOOMED_TITLE in text and ZOOM_RULE in text and FULL_TITLE not in text
        rows = table_cells(screen)
        assert len(rows) == 21 + 1 + 1 + 1  # the table lists every point, zoomed or not
        assert rows[-1][0].endswith("outlier · bad model") and rows[-1][2] == "2,000.00"
        assert [r[-1] == PARETO_MARK for r in rows] == flags  # the engine's flags

        await pilot.press("z")
        await pilot.pause()
        assert not screen.zoomed
        assert chart.hidden == 0 and chart.ylim[1] >= 2000.0 and chart.ylim[0] <= 775.2
        text = chart_text(chart)
        assert FULL_TITLE in text and ZOOMED_TITLE not in text
        assert len(table_cells(screen)) == 24

        await pilot.press("z")
        await pilot.pause()
        assert screen.zoomed and chart.ylim[1] < 2000.0
        assert ZOOMED_TITLE in chart_text(chart)


async def test_without_an_outlier_the_full_view_is_the_default():
    app = CompareApp(combine([reference_sweep(), other_run()]))
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        screen = app.screen
        chart = screen.query_one(ParetoChart)
        assert not screen.zoomed and chart.hidden == 0
        assert FULL_TITLE in chart_text(chart)
        await pilot.press("z")
        await pilot.pause()
        assert screen.zoomed and chart.hidden == 0  # nothing to leave out: the same range
        assert ZOOMED_TITLE in chart_text(chart)


def test_snapshot_of_the_comparison_screen(snap_compare):
    app = AshemApp(ReplaySource(replay_with_sweep()), compare=[other_run(split="test")])
    assert snap_compare(app, terminal_size=SIZE, press=["c"])


# -- the command line ----------------------------------------------------------------------
def write_sweep(run_dir, sweep: dict):
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "sweep.json").write_text(json.dumps(sweep), encoding="utf-8")
    return run_dir


def test_compare_errors_are_one_line(capsys, tmp_path):
    good = write_sweep(tmp_path / "good", other_run())
    assert main(["--compare", str(good), str(tmp_path / "absent")], hard_exit=False) == 2
    err = one_line_error(capsys)
    assert err.startswith("ashem: compare:") and "absent" in err and "does not exist" in err
    (tmp_path / "empty").mkdir()
    assert main(["--compare", str(tmp_path / "empty")], hard_exit=False) == 2
    assert "no sweep.json" in one_line_error(capsys)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "sweep.json").write_text("{not json", encoding="utf-8")
    assert main(["--compare", str(tmp_path / "bad")], hard_exit=False) == 2
    assert "not valid JSON" in one_line_error(capsys)
    broken = other_run()
    del broken["series"][0]["points"][0]["macs_per_token"]
    write_sweep(tmp_path / "broken", broken)
    assert main(["--compare", str(tmp_path / "broken")], hard_exit=False) == 2
    err = one_line_error(capsys)
    assert "'plain 2 layers'" in err and "macs_per_token" in err
    del broken["series"][0]["points"]
    write_sweep(tmp_path / "broken", broken)
    assert main(["--compare", str(tmp_path / "broken")], hard_exit=False) == 2
    assert "not a complete ashem sweep" in one_line_error(capsys)


def test_compare_refuses_run_options(capsys, tmp_path):
    good = str(write_sweep(tmp_path / "good", other_run()))
    assert main(["--compare", good, "--set", "run.seed=1"], hard_exit=False) == 2
    assert "--compare" in one_line_error(capsys)
    assert main(["--compare", good, "--paused"], hard_exit=False) == 2
    assert "--compare" in one_line_error(capsys)
    assert main(["--compare", good, "--resume", str(tmp_path)], hard_exit=False) == 2
    one_line_error(capsys)


def test_compare_with_a_bad_replay_is_one_line(capsys, tmp_path):
    good = str(write_sweep(tmp_path / "good", other_run()))
    assert main(["--replay", str(tmp_path / "nothing"), "--compare", good],
                hard_exit=False) == 2
    assert "no events file" in one_line_error(capsys)


def test_a_sweep_without_a_name_takes_its_directory_name(tmp_path):
    nameless = {k: v for k, v in other_run().items() if k != "name"}
    (sweep,) = load_sweeps([str(write_sweep(tmp_path / "run-b", nameless))])
    assert sweep["name"] == "run-b"


@pytest.mark.skipif(sys.platform != "linux", reason="pty")
def test_compare_alone_runs_no_dashboard_and_q_quits(tmp_path):
    """The real `python -m ashem_app --compare A B` in a pseudo-terminal."""
    a = write_sweep(tmp_path / "a", reference_sweep())
    b = write_sweep(tmp_path / "b", other_run())
    term = Terminal([sys.executable, "-m", "ashem_app", "--compare", str(a), str(b)],
                    cwd=ROOT)
    try:
        term.wait_for(b"Pareto", timeout=60)
        term.send("q")
        deadline = time.monotonic() + 10
        while term.proc.poll() is None and time.monotonic() < deadline:
            term.read(0.05)
        assert term.proc.poll() == 0, term.seen[-2000:]
        assert b"REPLAY" not in term.seen and b"Pause/Resume" not in term.seen
    finally:
        term.close()


# -- a study: each configuration's mean over seeds, with the engine's 95 % intervals ---------
T_975_1 = 12.7062  # Student t(0.975, 1 degree of freedom), from printed tables


def write_study(root, finished=True):
    """A study of one configuration "cfg" and two seeds whose sweeps are the reference sweep
    and the same with every PPL 10 higher and every MACs 2 % higher."""
    sweeps = []
    for k in range(2):
        sweep = reference_sweep()
        for s in sweep["series"]:
            for p in s["points"]:
                p["ppl"] += 10 * k
                p["macs_per_token"] *= 1 + 0.02 * k
        sweeps.append(sweep)
    return write_study_of(root, {"cfg": sweeps}, finished)


def nll_interval(ppls: list[float]) -> tuple[float, float, float]:
    """By hand: the geometric mean of two PPLs and exp(mean NLL -/+ t · sd / sqrt(2))."""
    a, b = (math.log(x) for x in ppls)
    half = T_975_1 * abs(a - b) / 2  # sd = |a - b| / sqrt(2), n = 2
    return math.exp((a + b) / 2), math.exp((a + b) / 2 - half), math.exp((a + b) / 2 + half)


async def test_compare_a_study_shows_each_points_interval(tmp_path):
    from ashem_app.widgets.pareto import error_bars

    sweeps = load_sweeps([str(write_study(tmp_path / "study"))])
    assert [s["name"] for s in sweeps] == ["cfg"]
    comparison = comparison_of(None, sweeps)
    first = comparison["series"][0]["points"][0]  # quantile 0: PPL 900 and 910
    mean, low, high = nll_interval([900.0, 910.0])
    assert first["ppl"] == pytest.approx(mean) and mean < 905.0  # the geometric mean
    nll = first["interval"]["nll"]
    assert (nll["ppl_lo"], nll["ppl_hi"]) == (pytest.approx(low, rel=1e-4),
                                              pytest.approx(high, rel=1e-4))
    points = [p for s in comparison["series"] for p in s["points"]]
    assert all(len(error_bars(p)) == 2 for p in points)  # PPL and MACs per token
    assert error_bars(first)[0][1] == [nll["ppl_lo"], nll["ppl_hi"]]
    app = CompareApp(comparison)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        screen = app.screen
        rows = table_cells(screen)
        assert len(rows) == 22
        assert rows[0][2] == f"{mean:,.1f} [{low:,.1f}–{high:,.1f}]"
        assert " [" in rows[21][2] and "[" not in rows[0][7]  # MACs' spread: the chart's bars
        assert "means over 2 seeds (PPL: geometric)" in plain(
            screen.query_one("#compare-summary"))
        chart = screen.query_one(ParetoChart)
        lowest_low = min(p["interval"]["nll"]["ppl_lo"] for p in points)
        assert chart.ylim[0] <= lowest_low  # the bars below the lowest mean are in view


def wild_study(root):
    """The bug's case: 2 configurations x 2 seeds, one of them with a huge spread between its
    seeds (PPL 1,000 and 95,000 at one point: a t interval on the PPL itself, with t(0.975, 1)
    = 12.7, reaches far below 0)."""
    calm = [other_run(), other_run()]
    calm[1]["series"][0]["points"][0]["ppl"] = 915.0
    wild = []
    for ppl in (1_000.0, 95_000.0):
        run = outlier_run()
        run["series"][0]["points"][0]["ppl"] = ppl
        wild.append(run)
    return write_study_of(root, {"calm": calm, "wild": wild})


async def test_a_wide_spread_over_two_seeds_draws_no_ppl_below_zero(tmp_path):
    comparison = comparison_of(None, load_sweeps([str(wild_study(tmp_path / "study"))]))
    (calm,), (wild,) = (s["points"] for s in comparison["series"])
    assert wild["interval"]["ppl"]["low"] < -100_000  # the t interval on PPL, as it was
    mean, low, high = nll_interval([1_000.0, 95_000.0])
    assert wild["ppl"] == pytest.approx(mean) and 0 < low < 1_000.0 and high > 95_000.0
    app = CompareApp(comparison)
    async with app.run_test(size=(120, 30)) as pilot:
        await pilot.pause()
        screen = app.screen
        rows = table_cells(screen)
        assert [r[0][2:] for r in rows] == ["calm · plain 2 layers", "wild · bad model"]
        nll = wild["interval"]["nll"]
        assert rows[1][2] == f"9,746.8 [{nll['ppl_lo']:.2e}–{nll['ppl_hi']:.2e}]"
        assert rows[1][2] == "9,746.8 [2.66e-09–3.58e+16]"  # n = 2: honest, not hidden
        mean, low, high = nll_interval([905.0, 915.0])
        assert rows[0][2] == f"{mean:,.1f} [{low:,.1f}–{high:,.1f}]" == "910.0 [848.6–975.8]"
        await pilot.press("z")  # the full view: every bar
        await pilot.pause()
        chart = screen.query_one(ParetoChart)
        assert not screen.zoomed and chart.ylim[0] >= 0
        assert chart.cut == 1 and chart.ylim[1] < 3 * wild["ppl"]  # not up to 3.58e+16
        assert "1 error bar cut at the top" in chart_title(chart)
        ticks = [float(t.replace(",", "")) for t in chart.render().plain.split("\n")
                 if "┤" in t for t in [t.split("┤")[0].strip()]]
        assert ticks and min(ticks) >= 0  # no y tick below 0


def test_compare_of_a_directory_that_is_neither_run_nor_study_is_one_line(capsys, tmp_path):
    (tmp_path / "neither").mkdir()
    assert main(["--compare", str(tmp_path / "neither")], hard_exit=False) == 2
    err = one_line_error(capsys)
    assert "neither a finished run" in err and "nor a study" in err
    unfinished = write_study(tmp_path / "study", finished=False)
    assert main(["--compare", str(unfinished)], hard_exit=False) == 2
    assert "no finished run" in one_line_error(capsys)


# -- the curves view: validation PPL against compute ---------------------------------------------
def write_curve_study_with_sweeps(root):
    """tests/test_engine_xaxis.py's study of 2 configurations x 2 seeds (their EpochEnded
    events), each run with the reference sweep too, as a finished study leaves it."""
    from test_engine_xaxis import write_curve_study

    write_curve_study(root)
    for summary in root.glob("runs/*/seed-*/*/summary.json"):
        write_sweep(summary.parent, reference_sweep())
    return root


def curves_chart(screen):
    from ashem_app.widgets.charts import CurvesChart

    chart = screen.query_one(CurvesChart)
    chart.render()
    return chart


def geometric(*ppls: float) -> float:
    return math.exp(sum(math.log(x) for x in ppls) / len(ppls))


async def test_v_shows_a_studys_best_so_far_against_training_macs_with_nll_bands(tmp_path):
    from ashem_engine.compare import study_compute_bands
    from ashem_engine.study_curves import study_curves

    study = write_curve_study_with_sweeps(tmp_path / "study")
    per_epoch = {c["name"]: c for c in study_curves(study)}
    bands = study_compute_bands(study)
    sweeps = load_sweeps([str(study)])
    assert [s["curve"]["name"] for s in sweeps] == ["small", "large"]
    assert [s["curve"]["compute"] for s in sweeps] == [bands["small"], bands["large"]]
    app = CompareApp(comparison_of(None, sweeps))
    async with app.run_test(size=SIZE) as pilot:
        screen = app.screen
        assert screen.query_one(ParetoChart).display and not curves_chart(screen).display
        await pilot.press("v")
        await pilot.pause()
        chart = curves_chart(screen)
        assert chart.display and not screen.query_one(ParetoChart).display
        assert not screen.query_one("#compare-table").display
        assert chart.axis.name == "macs"  # the compute-matched view by default
        for name, band in bands.items():  # the engine's figures, drawn as they are
            assert chart.series[name] == [(p["training_macs"], p["ppl_mean"])
                                          for p in band if p["n"]]
            assert chart.bands[name] == [(p["training_macs"], p["ppl_lo"], p["ppl_hi"])
                                         for p in band if p["n"] >= 2]
        # tests/test_engine_xaxis.py's curves by hand: each seed's best so far at every MACs
        # where one of the study's runs ended an epoch, the geometric mean where any reached it
        assert chart.series["small"] == [
            (1e9, pytest.approx(geometric(400, 420))), (2e9, pytest.approx(geometric(300, 310))),
            (3e9, pytest.approx(geometric(250, 310))), (3.2e9, pytest.approx(270.0))]
        assert chart.series["large"] == [
            (4e9, pytest.approx(geometric(380, 360))), (8e9, pytest.approx(geometric(260, 280))),
            (12e9, pytest.approx(275.0))]  # its third epoch: one seed, no band
        assert len(chart.bands["small"]) == 3 and len(chart.bands["large"]) == 2
        assert all(0 < low < high for pts in chart.bands.values() for _, low, high in pts)
        title = chart_title(chart)
        assert title.startswith("validation PPL vs training MACs") and "95 % band" in title
        assert "best so far" in title
        text = plain(screen.query_one("#compare-summary"))
        assert "2 configurations · validation PPL per epoch" in text
        assert chart.x_ticks[1] and all(t.endswith("G") for t in chart.x_ticks[1])
        for axis, field in (("epoch", None), ("tokens", "tokens_trained"),
                            ("time", "run_seconds")):
            await pilot.press("x")
            await pilot.pause()
            chart = curves_chart(screen)
            assert chart.axis.name == axis  # the per-epoch means, with no t band on PPL
            points = per_epoch["small"]["points"]
            assert chart.series["small"] == [
                (i + 1 if field is None else p[field], p["val_ppl"])
                for i, p in enumerate(points)]
            assert chart.bands == {"small": [], "large": []}
            assert "best so far" not in chart_title(chart)
        await pilot.press("x")
        await pilot.pause()
        assert curves_chart(screen).axis.name == "macs"
        assert curves_chart(screen).series == chart_series_before(bands)
        await pilot.press("v")  # back to the sweeps
        await pilot.pause()
        assert screen.query_one(ParetoChart).display and not curves_chart(screen).display


def chart_series_before(bands: dict) -> dict:
    return {name: [(p["training_macs"], p["ppl_mean"]) for p in band if p["n"]]
            for name, band in bands.items()}


async def test_a_band_far_out_is_cut_at_twice_the_highest_mean(tmp_path):
    from test_engine_xaxis import write_curve_study

    wild = {"calm": [[(1, 1, 300.0, 1000, 1e9, 10.0), (1, 2, 200.0, 2000, 2e9, 20.0)],
                     [(1, 1, 310.0, 1000, 1e9, 10.0), (1, 2, 205.0, 2000, 2e9, 20.0)]],
            "wild": [[(1, 1, 100.0, 1000, 1e9, 10.0), (1, 2, 90.0, 2000, 2e9, 20.0)],
                     [(1, 1, 90_000.0, 1000, 1e9, 10.0), (1, 2, 80_000.0, 2000, 2e9, 20.0)]]}
    study = write_curve_study(tmp_path / "study", wild)
    for summary in study.glob("runs/*/seed-*/*/summary.json"):
        write_sweep(summary.parent, reference_sweep())
    app = CompareApp(comparison_of(None, load_sweeps([str(study)])))
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("v")
        await pilot.pause()
        chart = curves_chart(app.screen)
        highest = max(v for pts in chart.series.values() for _, v in pts)
        assert chart.bands["wild"][0][2] > 1e20  # n = 2: the engine's band, as it is
        assert app.screen.log_y is None and "log y" in chart_title(chart)  # > 10x: log
        assert chart.cut == 4  # wild's: above 2 x the highest mean, below half the lowest
        assert "(cut at edges)" in chart_title(chart)
        ys = [si_value(t.split("┤")[0]) for t in chart.render().plain.split("\n") if "┤" in t]
        assert 0 <= min(ys) and max(ys) <= 2.1 * highest  # no y below 0, none far above


def si_value(tick: str) -> float:
    """A y tick's value: "5k" -> 5000, "1,234.5" -> 1234.5."""
    tick = tick.strip().replace(",", "")
    scale = {"k": 1e3, "M": 1e6, "G": 1e9}.get(tick[-1:], 1.0)
    return float(tick[:-1] if scale != 1.0 else tick) * scale


async def test_the_curves_of_run_directories_and_of_the_run_shown(tmp_path):
    from test_app_xaxis import with_run_fields
    from app_events import write_events

    other = write_sweep(tmp_path / "other", other_run())
    events = with_run_fields(make_events())
    write_events(events, other / "events.jsonl")
    nothing = write_sweep(tmp_path / "no-events", reference_sweep())
    sweeps = load_sweeps([str(other), str(nothing)])
    assert sweeps[1]["curve"] is None  # no events.jsonl: a sweep still, no curve
    app = AshemApp(ReplaySource(replay_with_sweep()), compare=sweeps)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("c", "v")
        await pilot.pause()
        chart = curves_chart(app.screen)
        assert set(chart.series) == {"reference", "scratch-2L"}
        # the replayed fixture has no run totals: every curve per epoch, saying so
        assert chart.axis.name == "epoch" and chart.bands == {"reference": [], "scratch-2L": []}
        assert "no training MACs in a log" in chart.render().plain
        assert [v for _, v in chart.series["scratch-2L"]] == \
            [e.val_ppl for e in events if e.kind == "EpochEnded"]


async def test_without_curves_the_view_says_where_they_come_from():
    app = CompareApp(combine([reference_sweep(), other_run()]))  # sweeps alone
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("v")
        await pilot.pause()
        empty = app.screen.query_one("#compare-empty")
        assert empty.display and "events.jsonl" in plain(empty)
        assert not curves_chart(app.screen).display


def test_snapshot_of_a_studys_curves(snap_compare, tmp_path):
    study = write_curve_study_with_sweeps(tmp_path / "study")
    app = CompareApp(comparison_of(None, load_sweeps([str(study)])))
    assert snap_compare(app, terminal_size=SIZE, press=["v"])


def test_snapshot_of_a_studys_intervals(snap_compare, tmp_path):
    """The bug's case: the wide study's bracketed intervals, its bars cut at the top, no y
    below 0 (z: the full view)."""
    app = CompareApp(comparison_of(None, load_sweeps([str(wild_study(tmp_path / "study"))])))
    assert snap_compare(app, terminal_size=(120, 30), press=["z"])
