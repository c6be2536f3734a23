"""Sinks (ashem_engine/sinks.py): one builder that every entry point calls, so a new logger
added there gets every event of a run however it was started; and one way to tell events apart
by kind, `dispatch`, for the summary, the progress lines, the dashboard's view and its log."""
from __future__ import annotations

import ast
import io
import json
import re
from pathlib import Path

import pytest

import ashem_app.describe
import ashem_app.state
from ashem_engine import events as ev
from ashem_engine import sinks
from ashem_engine.__main__ import main
from ashem_engine.control import RunControl
from ashem_engine.settings import load_settings
from ashem_engine.summary import SummaryReducer
from engine_support import single_thread  # noqa: F401  (autouse fixture)
from tiny import TINY, sets, tiny_settings

REPO = Path(__file__).resolve().parents[1]
QUICK = ["stages.1.max_epochs=1", "stages.2.max_epochs=1",
         "run.loggers=['recorder']"]  # the logger of the `loggers` fixture


class Recorder:
    """A new logger: every event's events.jsonl line, as it came, and whether it was closed."""

    def __init__(self, run_dir: Path):
        self.run_dir, self.lines, self.closed = run_dir, [], False

    def __call__(self, event: ev.Event) -> None:
        self.lines.append(json.dumps(event.to_dict(), allow_nan=True))

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def loggers(monkeypatch) -> list[Recorder]:
    """A logger added to the builder's registry (sinks.LOGGERS) as "recorder": one Recorder
    per run whose settings name it."""
    made: list[Recorder] = []

    def make(run_dir: Path, settings) -> Recorder:
        made.append(Recorder(run_dir))
        return made[-1]
    monkeypatch.setitem(sinks.LOGGERS, "recorder", sinks.Logger(make))
    return made


def logged(recorder: Recorder) -> list[str]:
    return (recorder.run_dir / "events.jsonl").read_text(encoding="utf-8").splitlines()


def test_a_new_logger_gets_every_event_from_each_entry_point(tmp_path, loggers, capsys):
    from ashem_app.sources import run_engine

    # the app's live source (its engine thread's runner), cancelled after the first epoch
    settings = tiny_settings(tmp_path, *QUICK)
    control, seen = RunControl(), []

    def app_sink(e: ev.Event) -> None:
        seen.append(e)
        if isinstance(e, ev.EpochEnded):
            control.cancel()
    assert run_engine(settings, sinks=(app_sink,), control=control).status == "cancelled"
    # ashem-engine resume, of that run; ashem-engine run; ashem-engine study
    run_dir = loggers[0].run_dir
    assert main(["resume", str(run_dir), "--quiet"]) == 0
    data, runs = settings.data.path, tmp_path / "runs"
    shipped = str(REPO / "settings.toml")
    assert main(["run", "--settings", shipped, "--quiet",
                 *sets(*TINY, *QUICK, f"data.path={data}", f"run.runs_dir={runs}")]) == 0
    assert main(["study", shipped, "--seeds", "1", "--dir", str(tmp_path / "study"), "--quiet",
                 *sets(*TINY, *QUICK, f"data.path={data}")]) == 0
    assert len(loggers) == 4 and all(r.closed for r in loggers)
    attempts, whole = loggers[0].lines + loggers[1].lines, logged(loggers[0])
    assert loggers[1].run_dir == run_dir and attempts == whole
    assert [json.loads(line)["kind"] for line in whole].count("RunStarted") == 2
    assert [json.dumps(e.to_dict(), allow_nan=True) for e in seen] == loggers[0].lines
    for recorder in loggers[2:]:
        assert recorder.lines == logged(recorder)
        assert json.loads(recorder.lines[-1])["kind"] == "RunFinished"
    capsys.readouterr()


def test_the_builder_makes_what_a_run_asks_for_in_order(tmp_path, loggers):
    reducer, own = SummaryReducer({}), [].append
    settings = load_settings(None, ["run.loggers=['recorder']"])
    made = sinks.build_sinks(tmp_path, reducer, settings=settings, progress=io.StringIO(),
                             extra=[own])
    assert [type(s).__name__ for s in made[:4]] == [
        "JsonLinesSink", "Recorder", "SummaryReducer", "ProgressPrinter"]
    assert made[1].run_dir == tmp_path and made[2] is reducer and made[4:] == [own]
    emit = sinks.Emitter(*made)
    emit(ev.Log("info", "hello"))
    sinks.close_sinks(made[:2])
    assert logged(made[1]) == made[1].lines and loggers[0].closed
    assert sinks.build_sinks(extra=[own]) == [own]  # no run directory: no files, no loggers
    (tmp_path / "other").mkdir()
    unnamed = sinks.build_sinks(tmp_path / "other", settings=load_settings(None))
    assert [type(s).__name__ for s in unnamed] == ["JsonLinesSink"] and len(loggers) == 1
    sinks.close_sinks(unnamed)


def test_the_progress_printer_is_quiet_when_asked(tmp_path):
    loud, quiet = io.StringIO(), io.StringIO()
    for out, is_quiet in ((loud, False), (quiet, True)):
        (printer,) = sinks.build_sinks(progress=out, quiet=is_quiet)
        printer(ev.Log("warning", "careful"))
    assert loud.getvalue() == "[warning] careful\n" and quiet.getvalue() == ""


# -- one way to dispatch by kind ---------------------------------------------------------------

def test_dispatch_calls_the_method_named_for_the_kind():
    class Holds:
        def on_Resumed(self, e, scale):
            return (e.where, scale)

    assert sinks.dispatch(Holds(), ev.Resumed("stage 2"), 3) == ("stage 2", 3)
    assert sinks.dispatch(Holds(), ev.Log("info", "x"), 3, default="none") == "none"


def kind_handlers(handlers) -> set[str]:
    return {name[3:] for name in dir(handlers) if name.startswith("on_")}


CONSUMERS = {"summary": lambda: SummaryReducer, "progress": lambda: sinks.ProgressPrinter,
             "log line": lambda: ashem_app.describe._LINES,
             "view": lambda: ashem_app.state._CHANGES}


@pytest.mark.parametrize("consumer", CONSUMERS)
def test_every_consumer_names_its_handlers_for_real_kinds(consumer):
    names = kind_handlers(CONSUMERS[consumer]())
    assert names and names <= set(ev.EVENT_TYPES), names - set(ev.EVENT_TYPES)


def test_dispatch_is_the_only_way_events_are_told_apart_by_kind():
    """No `on_` name is built, and no chain of isinstance checks on event classes is written,
    outside sinks.dispatch."""
    event_classes = set(ev.EVENT_TYPES)
    for path in sorted([*REPO.glob("ashem_engine/*.py"), *REPO.glob("ashem_app/**/*.py")]):
        source = path.read_text(encoding="utf-8")
        if path.name != "sinks.py":
            assert not re.search(r"""f["']on_\{""", source), path
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.If):
                assert _isinstance_chain(node, event_classes) < 3, (path, node.lineno)


def _isinstance_chain(node: ast.If, event_classes: set[str]) -> int:
    """How many links of an if / elif chain test `isinstance(x, SomeEvent)`."""
    links = 0
    while isinstance(node, ast.If):
        test = node.test
        if isinstance(test, ast.Call) and getattr(test.func, "id", "") == "isinstance":
            checked = test.args[1]
            links += getattr(checked, "id", getattr(checked, "attr", "")) in event_classes
        node = node.orelse[0] if len(node.orelse) == 1 else None
    return links
