"""`ashem` / `python -m ashem_app`: open the dashboard and start the run.

    ashem [--settings settings.toml] [--set table.key=value ...] [--paused]
    ashem --replay runs/<id>        # a finished run, or one a headless engine still writes
    ashem --resume runs/<id>        # continue a cancelled or killed run
    ashem --attach runs/<id>        # follow and steer a run another process writes
    ashem --compare runs/<a> runs/<b> ...           # only the comparison screen (no run)
    ashem --compare studies/<id>    # a study: each configuration's mean over seeds, 95 % bars
    ashem --study studies/<id>      # follow a study while it runs (also --compare on one)
    ashem --replay runs/<id> --compare runs/<a> ... # the replay, compared with those runs (c)

Bad settings or arguments (also a --compare directory that is neither a run with a
readable sweep.json nor a study): one line on stderr, exit code 2, nothing started.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn, Optional, Sequence, Union

if TYPE_CHECKING:  # pragma: no cover
    from textual.app import App

PROG = "ashem"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, exit 2 (argparse prints usage too)
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog=PROG, description="Train an early-exit LM with ASHEM in a terminal "
                                       "dashboard, or replay a run.")
    p.add_argument("--settings", metavar="FILE",
                   help="settings file (default: ./settings.toml, else the built-in defaults)")
    p.add_argument("--set", metavar="TABLE.KEY=VALUE", action="append", default=[],
                   dest="overrides", help="override one setting (repeatable)")
    p.add_argument("--paused", action="store_true",
                   help="start the run held; press space to begin")
    p.add_argument("--replay", metavar="RUN_DIR",
                   help="show a run from its events.jsonl (follows it while it is written)")
    p.add_argument("--resume", metavar="RUN_DIR",
                   help="continue a cancelled or killed run from its last finished epoch")
    p.add_argument("--attach", metavar="RUN_DIR",
                   help="follow a run that another process writes (ashem-engine run --hold, "
                        "resume, torchrun) and control it; q detaches, the run goes on")
    p.add_argument("--popups", action="store_true",
                   help="in replay, open transition screens by themselves")
    p.add_argument("--compare", metavar="DIR", nargs="+", default=[],
                   help="compare the threshold sweeps (sweep.json) of these finished runs, "
                        "or of a study directory's configurations (the mean over seeds, "
                        "with 95 %% interval bars): alone, only the comparison screen; with "
                        "--replay, added to the replayed run's comparison (key c)")
    p.add_argument("--study", metavar="STUDY_DIR",
                   help="follow a study while it runs: its runs by configuration and seed, "
                        "elapsed time and estimate, the table of means with 95 %% intervals; "
                        "o opens the running run's dashboard (attached), q there comes back "
                        "(--compare on a study still running opens this view too)")
    return p


def _fail(message: str, code: int = 2) -> int:
    print(f"{PROG}: {' '.join(str(message).split())}", file=sys.stderr)
    return code


def _load_settings(given: Optional[str], overrides: Sequence[str]):
    """Settings, the defaults notice if any, or an error line (the engine's settings module
    is the one authority)."""
    from ashem_engine.settings import SettingsError, choose_settings_file, load_settings

    path, notice = choose_settings_file(given)
    if notice:  # also shown in the app; printed so that it stays on screen after it
        print(f"{PROG}: {notice}", file=sys.stderr)
    try:
        return load_settings(path, overrides=tuple(overrides)), notice, None
    except SettingsError as err:
        return None, notice, f"settings: {err}"
    except OSError as err:
        return None, notice, f"settings: cannot read {path}: {err.strerror or err}"


def prepare_process() -> None:
    """Before any thread starts: the allocator keeps freed memory for every thread, the
    engine's worker included (ashem_engine/memory.py)."""
    from ashem_engine.memory import keep_freed_memory

    keep_freed_memory()


def main(argv: Optional[Sequence[str]] = None, hard_exit: bool = True) -> int:
    """The command line. With `hard_exit` (the console script), the process ends right
    after the app has closed and the engine thread has stopped: interpreter teardown with
    torch and datasets loaded takes another second or more, and quitting must be quick."""
    prepare_process()
    args = build_parser().parse_args(argv)
    study = _followed_study(args)
    if study is not None:
        return study if isinstance(study, int) else _follow_study(study, hard_exit)
    app_or_code = _make_app(args)
    if isinstance(app_or_code, int):
        return app_or_code
    return _run(app_or_code, hard_exit)


def _make_app(args: argparse.Namespace) -> Union["App[int]", int]:
    """The app the arguments ask for, or the exit code of a one-line error."""
    from .comparison import CompareApp, ComparisonError, comparison_of, load_sweeps

    compared: list[dict] = []
    if args.attach:
        return _attach_app(args)
    for shown_only in ("compare", "replay"):  # these train nothing
        if getattr(args, shown_only) and (args.overrides or args.paused):
            return _fail(f"error: --set and --paused do not apply to --{shown_only}")
    if args.compare:
        if args.resume or args.settings:
            return _fail("error: --compare goes alone or with --replay (no run is trained)")
        try:
            compared = load_sweeps(args.compare)
        except ComparisonError as err:
            return _fail(f"compare: {err}")
    if args.replay:
        return _replay_app(args, compared)
    if args.compare:
        return CompareApp(comparison_of(None, compared))
    if args.resume:
        return _resume_app(args)
    return _new_run_app(args)


def _followed_study(args: argparse.Namespace) -> Union[Path, int, None]:
    """The study directory to follow (--study, or --compare of one study still running), the
    exit code of a one-line error, or None: no study view."""
    if args.study is None and len(args.compare) != 1:
        return None
    from ashem_engine.study import StudyError, is_study, reopen_study
    from ashem_engine.study_progress import study_alive

    others = [f"--{name}" for name in ("settings", "replay", "resume", "attach", "compare")
              if getattr(args, name)] + (["--set"] if args.overrides else []) + \
        (["--paused"] if args.paused else [])
    if args.study is None:
        alone = len(args.compare) == 1 and others == ["--compare"]
        if not (alone and is_study(args.compare[0]) and study_alive(Path(args.compare[0]))):
            return None
        directory = args.compare[0]
    elif others:
        return _fail(f"error: --study goes alone (not with {', '.join(others)})")
    else:
        directory = args.study
    try:
        reopen_study(directory)
    except StudyError as err:
        return _fail(f"study: {err}")
    return Path(directory)


def _follow_study(directory: Path, hard_exit: bool) -> int:
    """The study view; its o attaches a dashboard to the running run, whose q (detach) comes
    back to the study view; q in the study view quits."""
    from .study_app import StudyApp

    while True:
        study = StudyApp(directory)
        code = _run(study, hard_exit=False)
        if study.attach_to is None or code != 0:
            break
        attached = _attach_app(build_parser().parse_args(["--attach", str(study.attach_to)]))
        if not isinstance(attached, int):
            _run(attached, hard_exit=False)
    if hard_exit:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def _replay_app(args: argparse.Namespace, compared: list[dict]) -> Union["App[int]", int]:
    from .app import AshemApp  # after argument checks: errors stay fast and quiet
    from .replay import ReplayError, resolve_events_path
    from .sources import FollowSource

    try:
        path = resolve_events_path(args.replay)
    except ReplayError as err:
        return _fail(f"replay: {err}")
    return AshemApp(FollowSource(path), popups=args.popups, compare=compared)


def _attach_app(args: argparse.Namespace) -> Union["App[int]", int]:
    others = [f"--{name}" for name in ("settings", "replay", "resume", "compare")
              if getattr(args, name)] + (["--set"] if args.overrides else []) + \
        (["--paused"] if args.paused else [])
    if others:
        return _fail(f"error: --attach goes alone (not with {', '.join(others)})")
    from ashem_engine.rundir import COMMAND_LOG, EVENTS_FILE

    run_dir = Path(args.attach)
    if not run_dir.is_dir():
        return _fail(f"attach: no run directory at {run_dir}")
    if not (run_dir / EVENTS_FILE).is_file():
        return _fail(f"attach: {run_dir} has no {EVENTS_FILE} (not an ashem run directory, "
                     "or its engine has not started yet)")
    from .app import AshemApp
    from .sources import RunDirSource

    return AshemApp(RunDirSource(run_dir), notice_title="Attached",
                    notice=f"{run_dir}: commands go to its {COMMAND_LOG}; q detaches and "
                           "leaves the run going")


def _resume_app(args: argparse.Namespace) -> Union["App[int]", int]:
    from ashem_engine.run import ResumeError, read_resume_point, resume_ashem
    from ashem_engine.sinks import build_sinks
    from ashem_engine.rundir import CheckpointError
    from ashem_engine.settings import SettingsError

    from .app import AshemApp
    from .replay import earlier_attempts
    from .sources import LiveSource

    if args.overrides:
        return _fail("error: --set does not apply to --resume (a run keeps its settings)")
    try:
        settings, _ = read_resume_point(args.resume)
        history = earlier_attempts(args.resume)  # read before the engine appends to it
    except (ResumeError, SettingsError, CheckpointError) as err:
        return _fail(f"resume: {err}")
    except OSError as err:
        return _fail(f"resume: cannot read the run's events: {err}")
    run_dir = args.resume

    def resume_runner(settings, sinks=(), control=None):
        return resume_ashem(run_dir, sinks=build_sinks(extra=sinks), control=control)

    return AshemApp(LiveSource(settings, runner=resume_runner, start_paused=args.paused,
                               history=history))


def _new_run_app(args: argparse.Namespace) -> Union["App[int]", int]:
    from .app import AshemApp
    from .sources import LiveSource

    settings, notice, error = _load_settings(args.settings, args.overrides)
    if error:
        return _fail(error)
    return AshemApp(LiveSource(settings, start_paused=args.paused), notice=notice)


def _run(app: "App[int]", hard_exit: bool) -> int:
    """Runs the app; its exit code. Our own loop: asyncio.run() would wait for the engine
    thread at exit; we give it a short grace after a cancel and then leave (the run
    directory is already consistent up to the last finished step)."""
    from .app import AshemApp

    source = app.source if isinstance(app, AshemApp) else None  # a CompareApp runs none
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        app.run(loop=loop)
    finally:
        engine_left = source is not None and source.engine_running
        if engine_left:
            source.cancel()
            engine_left = not source.wait(timeout=0.3)
    code = app.return_code if app.return_code is not None else getattr(app, "exit_code", 0)
    if app._exception is not None:  # an exception escaped Textual: it printed it already
        code = 1
    if hard_exit or engine_left:
        # Everything the run wrote is closed (events, summary, checkpoints are written
        # atomically by the engine); only buffered stdio is left to flush.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    loop.close()
    return code


if __name__ == "__main__":
    sys.exit(main())
