"""The study view (`ashem --study STUDY_DIR`): its grid and table from a study directory written
step by step, the key that opens the running run's dashboard and the way back, the command
line, and snapshots at 80 × 24 and 160 × 45."""
from __future__ import annotations

import io
from pathlib import Path

import pytest
from rich.console import Console

from app_events import plain
from test_engine_study_progress import (NOW, batch, end_run, epoch_ended, hold, make_study,
                                        release, stage_started, start_run, write_events)

from ashem_app import keys
from ashem_app.__main__ import main
from ashem_app.screens.help import help_table
from ashem_app.screens.study import StudyScreen
from ashem_app.study_app import StudyApp

SMALL, LARGE = (80, 24), (160, 45)


def grid_text(screen: StudyScreen) -> str:
    console = Console(width=200, file=io.StringIO(), record=True, color_system=None)
    console.print(screen.query_one("#study-grid").content)
    return console.export_text()


def grid_rows(screen: StudyScreen) -> dict[str, list[str]]:
    """configuration -> its cells, split on the grid's column gaps."""
    lines = grid_text(screen).splitlines()
    return {line.split()[0]: [c.strip() for c in line.split("  ")[1:] if c.strip()]
            for line in lines[1:] if line.strip()}


def table_rows(screen: StudyScreen) -> list[list[str]]:
    table = screen.query_one("#study-table")
    if not table.display:
        return []
    return [[c.plain for c in table.get_row_at(i)] for i in range(table.row_count)]


def table_columns(screen: StudyScreen) -> list[str]:
    return [c.label.plain for c in screen.query_one("#study-table").columns.values()]


def mid_study(root: Path) -> Path:
    """Two configurations × three seeds: seeds 42 and 43 of both finished, base seed 44 in
    stage 2, wide seed 44 waiting."""
    study = make_study(root, seeds=3)
    hold(study)
    for config, seed, ppl, seconds in (("base", 42, 412.34, 100.0), ("wide", 42, 398.1, 140.0),
                                       ("base", 43, 405.2, 110.0), ("wide", 43, 391.7, 150.0)):
        end_run(start_run(study, config, seed), "finished", seconds=seconds, ppl=ppl)
    running = start_run(study, "base", 44)
    write_events(running, stage_started(1, t=1.0), epoch_ended(1, 3, t=40.0),
                 stage_started(2, t=45.0, max_epochs=10), batch(2, 3, t=75.0), written=NOW - 5)
    return study


def study_app(study: Path) -> StudyApp:
    return StudyApp(study, clock=lambda: NOW, interval=3600.0)  # tests read when they say


# -- the grid and the table as the study goes on ---------------------------------------------
async def test_the_view_follows_a_study_written_step_by_step(tmp_path):
    study = make_study(tmp_path / "the-study")
    hold(study)
    app = study_app(study)
    async with app.run_test(size=LARGE) as pilot:
        screen = app.screen
        assert grid_rows(screen) == {"base": ["▷ next", "·"], "wide": ["·", "·"]}
        assert "seed 42" in grid_text(screen) and "seed 43" in grid_text(screen)
        assert "0 of 4 runs finished" in plain(screen.query_one("#study-headline"))
        assert "no estimate yet" in plain(screen.query_one("#study-headline"))
        assert table_rows(screen) == [] and screen.query_one("#study-empty").display

        base42 = start_run(study, "base", 42)  # 1. the first run trains
        write_events(base42, stage_started(1, t=1.0), batch(1, 2, t=30.0))
        screen.read_now()
        await pilot.pause()
        assert grid_rows(screen)["base"] == ["▶ s1 e2/3", "·"]
        assert "base seed 42: stage 1 of 2, epoch 2 of 3 · 0:30" in \
            plain(screen.query_one("#study-detail"))

        end_run(base42, "finished", seconds=100.0, ppl=412.34)  # 2. the table appears
        screen.read_now()
        await pilot.pause()
        assert grid_rows(screen) == {"base": ["✓ 412.3", "·"], "wide": ["▷ next", "·"]}
        headline = plain(screen.query_one("#study-headline"))
        assert "1 of 4 runs finished · elapsed 1:40 · about 5:00 left" in headline
        assert table_columns(screen) == ["figure", "base (n=1)", "wide (n=0)"]
        rows = {r[0]: r[1:] for r in table_rows(screen)}
        assert rows["final.ppl"] == ["412.3", "–"]  # one seed: no interval yet
        assert rows["training_macs"] == ["2 T", "–"]

        wide42 = start_run(study, "wide", 42)  # 3. the second run trains
        write_events(wide42, stage_started(1, t=1.0))
        screen.read_now()
        await pilot.pause()
        assert grid_rows(screen)["wide"] == ["▶ s1", "·"]

        end_run(wide42, "failed", seconds=20.0, error="the loss is NaN")  # 4. it failed
        release(study)
        screen.read_now()
        await pilot.pause()
        assert grid_rows(screen)["wide"] == ["✗ failed", "·"]
        assert "● failed" in plain(screen.query_one("#study-headline"))
        assert "wide seed 42 failed: the loss is NaN" in plain(screen.query_one("#study-detail"))

        end_run(start_run(study, "base", 43), "finished", seconds=120.0, ppl=420.0)
        screen.read_now()  # 5. a second seed: the interval appears
        await pilot.pause()
        rows = {r[0]: r[1:] for r in table_rows(screen)}
        (base,) = [c for c in screen.progress.table["configurations"] if c["name"] == "base"]
        ppl = base["figures"]["final.ppl"]
        assert rows["final.ppl"][0] == f"{ppl['mean']:.4g} ± {ppl['half_width']:.4g}"
        assert table_columns(screen)[1] == "base (n=2)"


async def test_the_differences_between_configurations_are_rows_too(tmp_path):
    study = mid_study(tmp_path / "s")
    app = study_app(study)
    async with app.run_test(size=LARGE):
        rows = {r[0]: r[1:] for r in table_rows(app.screen)}
        (d,) = [d for d in app.screen.progress.table["differences"] if d["figure"] == "final.ppl"]
        assert d["n"] == 2 and rows["Δ final.ppl − base"] == \
            ["", f"{d['mean']:.4g} ± {d['half_width']:.4g}"]


async def test_the_timer_reads_the_directory_again(tmp_path):
    study = make_study(tmp_path / "s", configs=("base",), seeds=1)
    hold(study)
    app = StudyApp(study, clock=lambda: NOW, interval=0.05)
    async with app.run_test(size=LARGE) as pilot:
        write_events(start_run(study, "base", 42), stage_started(1, t=1.0))
        for _ in range(100):
            await pilot.pause(0.05)
            if grid_rows(app.screen)["base"] == ["▶ s1"]:
                break
        assert grid_rows(app.screen)["base"] == ["▶ s1"]


async def test_a_directory_gone_meanwhile_is_said_not_raised(tmp_path):
    study = make_study(tmp_path / "s", configs=("base",), seeds=1)
    app = study_app(study)
    async with app.run_test(size=LARGE) as pilot:
        (study / "study.json").unlink()
        app.screen.read_now()
        await pilot.pause()
        assert "not a study directory" in plain(app.screen.query_one("#study-detail"))


# -- opening the running run and coming back -------------------------------------------------
@pytest.mark.parametrize("key", ["o", "enter"])
async def test_o_asks_to_attach_to_the_running_run(tmp_path, key):
    study = mid_study(tmp_path / "s")
    app = study_app(study)
    async with app.run_test(size=SMALL) as pilot:
        await pilot.press(key)
        await pilot.pause()
    assert app.attach_to == next((study / "runs" / "base" / "seed-44").iterdir())
    assert app.return_code == 0


async def test_without_a_running_run_o_says_so_and_stays(tmp_path):
    study = make_study(tmp_path / "s")
    app = study_app(study)
    async with app.run_test(size=SMALL) as pilot:
        await pilot.press("o")
        await pilot.pause()
        assert app.is_running and app.attach_to is None
        assert any("No run" in n.message for n in app._notifications)
        await pilot.press("q")
        await pilot.pause()
    assert app.return_code == 0 and app.attach_to is None


def test_the_command_line_attaches_and_comes_back(monkeypatch, tmp_path):
    """main's loop: the study view, the attached dashboard of the run it asked for, then the
    study view again, whose q ends it."""
    from ashem_app import __main__ as cli
    from ashem_app.app import AshemApp

    study = mid_study(tmp_path / "s")
    running = next((study / "runs" / "base" / "seed-44").iterdir())
    shown = []

    def run(app, hard_exit):
        shown.append(app)
        if isinstance(app, StudyApp) and len(shown) == 1:
            app.attach_to = running  # o pressed
        return 0

    monkeypatch.setattr(cli, "_run", run)
    assert main(["--study", str(study)], hard_exit=False) == 0
    first, attached, again = shown
    assert isinstance(first, StudyApp) and isinstance(again, StudyApp)
    assert isinstance(attached, AshemApp) and attached.source.run_dir == running
    assert again.directory == study


def test_compare_on_a_running_study_opens_the_study_view(monkeypatch, tmp_path):
    from ashem_app import __main__ as cli

    study = mid_study(tmp_path / "s")
    shown = []
    monkeypatch.setattr(cli, "_run", lambda app, hard_exit: shown.append(app) or 0)
    assert main(["--compare", str(study)], hard_exit=False) == 0
    assert [type(a) for a in shown] == [StudyApp]


@pytest.mark.parametrize("argv, words", [
    (["--study", "{tmp}/missing"], "does not exist"),
    (["--study", "{tmp}"], "not a study directory"),
    (["--study", "{study}", "--replay", "{study}"], "--study goes alone (not with --replay)"),
])
def test_bad_study_arguments_are_one_line(capsys, tmp_path, argv, words):
    study = make_study(tmp_path / "s")
    argv = [a.format(tmp=tmp_path, study=study) for a in argv]
    assert main(argv, hard_exit=False) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and words in err and "Traceback" not in err


def test_the_keys_are_in_the_registry_and_the_help():
    assert [k for k, _ in keys.help_rows("study")] == ["o/enter", "q"]
    assert {b.key for b in keys.bindings("study")} >= {"o,enter", "q"}

    class Holder:
        content = help_table()

    text = plain(Holder())
    assert "Study view" in text and "running run's dashboard" in text


# -- snapshots -------------------------------------------------------------------------------
@pytest.mark.parametrize("size", [SMALL, LARGE], ids=["80x24", "160x45"])
def test_snapshot_of_the_study_view(snap_compare, tmp_path, size):
    app = study_app(mid_study(tmp_path / "the-study"))
    assert snap_compare(app, terminal_size=size)
