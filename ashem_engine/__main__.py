"""Headless command line: `ashem-engine run`, `resume RUN_DIR`, `study SETTINGS... --seeds N`,
`export RUN_DIR --tensorboard LOGDIR` and `init [FILE]`; one more consumer of the engine's events (sinks.ProgressPrinter).

A headless run holds at the hold points in `run.pause_at` only with `--hold`, until a dashboard
attached with `ashem --attach RUN_DIR` continues it; any headless run obeys the commands such
a dashboard writes (command_file.py). Exit codes: `exitcodes.exit_code`, the rule of `ashem`."""
from __future__ import annotations

import argparse
import os
import signal
import sys
from typing import Optional, Sequence

from .control import RunControl
from .exitcodes import EXIT_BAD_INPUT, EXIT_OK, exit_code
from .reference import format_table
from .settings import (LOCAL_FILE, SettingsError, choose_settings_file, load_settings,
                       write_default_settings)
from .sinks import ProgressPrinter, build_sinks


class OneLineParser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, no usage block, exit 2
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message} (see --help)\n")


HOLD_HELP = ("hold at the boundaries in run.pause_at until a dashboard attached with "
             "'ashem --attach RUN_DIR' continues (without it a headless run never holds)")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="ashem-engine",
                           description="Train an early-exit LM with ASHEM, headless.")
    sub = parser.add_subparsers(dest="command", parser_class=OneLineParser)
    run = sub.add_parser("run", help="run every stage with the given settings")
    run.add_argument("--settings", default=None,
                     help="settings file (default: ./settings.toml, else the built-in defaults)")
    run.add_argument("--set", dest="overrides", action="append", default=[],
                     metavar="TABLE.KEY=VALUE", help="override one setting (repeatable)")
    resume = sub.add_parser("resume", help="continue a cancelled or killed run")
    resume.add_argument("run_dir", help="the run directory, e.g. runs/20261125T180000Z-ashem")
    for command in (run, resume):
        command.add_argument("--quiet", action="store_true", help="print only the final table")
        command.add_argument("--hold", action="store_true", help=HOLD_HELP)
    add_study_parser(sub)
    export = sub.add_parser("export", help="write a run's figures for another tool")
    export.add_argument("run_dir", metavar="RUN_DIR", help="the run directory")
    export.add_argument("--tensorboard", required=True, metavar="LOGDIR",
                        help="TensorBoard scalars of every event, as run.loggers = "
                        "['tensorboard'] writes them, in a new file in LOGDIR (needs "
                        "pip install \"ashem[tensorboard]\")")
    init = sub.add_parser("init", help="write the commented default settings.toml to edit")
    init.add_argument("file", nargs="?", default=LOCAL_FILE,
                      help="where to write it (default: ./settings.toml; never overwritten)")
    return parser


STUDY_HELP = """Runs each configuration (one settings file each, named by its file's stem)
over N seeds: run.seed + 0, 1, ..., N - 1 (the seed changes initialisation and shuffles, never
the data). Every run is an ordinary run directory in STUDY_DIR/runs/<config>/seed-<s>/, headless
and never held; table.json, table.csv and table.md (mean, sd, 95 % interval and per-seed values
of every figure) are rewritten after each finished run. To go on after a stop, run the same
command with --dir STUDY_DIR, or 'ashem-engine study --resume STUDY_DIR': finished runs are
skipped, an interrupted one resumed, missing ones started. 'ashem-engine study --add STUDY_DIR
SETTINGS...' adds configurations to a study (its seeds and overrides) and goes on with it. A
run whose stage-1 settings equal an earlier configuration's at its seed takes that run's stage 1
(the same figures, bit for bit) instead of training it again; --no-share trains every one."""


def add_study_parser(sub) -> None:
    study = sub.add_parser("study", help="run configurations over several seeds, with a "
                           "table of means and 95 %% intervals", description=STUDY_HELP)
    study.add_argument("settings", nargs="*", metavar="SETTINGS.toml",
                       help="one settings file per configuration")
    study.add_argument("--seeds", type=int, default=None, metavar="N",
                       help="seeds per configuration (at least 1)")
    study.add_argument("--set", dest="overrides", action="append", default=[],
                       metavar="TABLE.KEY=VALUE", help="override one setting of every "
                       "configuration (repeatable)")
    study.add_argument("--dir", default=None, metavar="STUDY_DIR",
                       help="the study directory (default: studies/<UTC timestamp>-study); an "
                       "existing study there goes on if it has the same configurations and seeds")
    study.add_argument("--resume", default=None, metavar="STUDY_DIR",
                       help="go on with this study as its study.json records it (alone)")
    study.add_argument("--add", default=None, metavar="STUDY_DIR",
                       help="add the SETTINGS files' configurations to this study (its seeds "
                       "and overrides), then go on with the whole study")
    study.add_argument("--plan", default=None, metavar="PLAN.toml",
                       help="the analysis plan (primary comparisons and endpoints, fixed before "
                       "the runs), recorded in study.json; a study that has one keeps it "
                       "(see ashem_engine/study_plan.py)")
    study.add_argument("--quiet", action="store_true",
                       help="only the study's own lines, not each run's progress")
    study.add_argument("--no-share", action="store_true",
                       help="train every run's stage 1 (by default a run takes the stage 1 of "
                       "an earlier configuration's run at its seed with the same stage-1 "
                       "settings: the same figures, bit for bit, without training it again)")


def bad_input(message: object) -> int:
    print(f"ashem-engine: error: {message}", file=sys.stderr)
    return EXIT_BAD_INPUT


def export(args: argparse.Namespace) -> int:
    from .tensorboard import TensorBoardError, export as write_tensorboard

    try:
        done = write_tensorboard(args.run_dir, args.tensorboard)
    except TensorBoardError as e:
        return bad_input(f"export: {e}")
    print(f"wrote {done.scalars:,} scalars of {done.events:,} events to {done.file}")
    return EXIT_OK


def init(file: str) -> int:
    try:
        written = write_default_settings(file)
    except SettingsError as e:
        return bad_input(e)
    print(f"wrote {written}: the spec's set-up, one comment per key")
    return EXIT_OK


STUDY_LINES = {
    "skip": "finished already, skipped ({run_dir})",
    "start": "starting",
    "resume": "resuming {run_dir}",
    "finished": "finished ({run_dir})",
    "cancelled": "cancelled; it resumes with the study ({run_dir})",
    "failed": "failed: {detail} ({run_dir})",
}


class StudyPrinter:
    """The study's own lines, between its runs' progress lines."""

    def __init__(self, printer: ProgressPrinter):
        self.line = printer.line

    def __call__(self, step) -> None:
        if step.action == "table":
            self.line(f"[study] table rewritten: {step.run_dir}/table.md ({step.detail})")
            return
        text = STUDY_LINES[step.action].format(**{**vars(step),
                                                  "run_dir": step.run_dir or "no run directory"})
        if step.action == "start" and step.detail:
            text += f" ({step.detail})"  # e.g. its stage 1 shared from another run
        self.line(f"[study {step.index}/{step.total}] {step.config} seed {step.seed}: {text}")


class StudyStop:
    """Ctrl-C in a study: the first cancels the run under way (it stays resumable) and
    starts no other; a second one interrupts at once."""

    def __init__(self):
        self.stopping = False
        self.control: Optional[RunControl] = None

    def new_control(self) -> RunControl:
        self.control = RunControl()  # headless: never held
        if self.stopping:
            self.control.cancel()
        return self.control

    def __call__(self, signum, frame) -> None:
        if self.stopping:
            raise KeyboardInterrupt
        self.stopping = True
        if self.control is not None:
            self.control.cancel()


def _study_plan(args: argparse.Namespace):
    """The placed study the arguments ask for, with its analysis plan recorded when --plan
    gives one, or an error line (StudyError)."""
    from .study_plan import attach_plan, read_plan

    analysis = read_plan(args.plan) if args.plan else None
    placed = _placed_study(args, analysis)
    return attach_plan(placed, analysis) if analysis else placed


def _placed_study(args: argparse.Namespace, analysis: Optional[dict]):
    """The study the arguments ask for, placed; a plan that cannot fit is refused first."""
    from .study import StudyError, grow_study, open_study, plan_study, reopen_study
    from .study_plan import check_fits

    if args.resume and (args.settings or args.seeds is not None or args.overrides or args.dir
                        or args.add):
        raise StudyError("--resume STUDY_DIR goes alone: its study.json holds the "
                         "configurations, the seeds and the overrides")
    if args.resume:
        return reopen_study(args.resume)
    if args.add and (args.seeds is not None or args.overrides or args.dir):
        raise StudyError("--add STUDY_DIR takes only settings files: the added configurations "
                         "get the study's seeds and overrides")
    if args.add:
        if analysis:  # an added configuration's name is its file's stem
            study = reopen_study(args.add)
            names = [c.name for c in study.configurations] + [
                os.path.splitext(os.path.basename(f))[0] for f in args.settings]
            check_fits(analysis, names, study.analysis_plan, args.add)
        return grow_study(args.add, args.settings)
    if args.seeds is None:
        raise StudyError("give --seeds N, the seeds per configuration")
    planned = plan_study(args.settings, args.seeds, args.overrides, args.dir)
    if analysis:
        check_fits(analysis, [c.name for c in planned.configurations], None, "")
    return open_study(planned)


def study(args: argparse.Namespace) -> int:
    from .study import StudyError, refuse_if_running

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return bad_input("study: a study runs in one process; under torchrun, run each "
                         "configuration with 'ashem-engine run'")
    try:
        plan = _study_plan(args)
        refuse_if_running(plan.directory)
    except StudyError as e:
        return bad_input(f"study: {e}")
    from .study_run import run_study
    from .study_table import study_overview

    (printer,) = build_sinks(progress=sys.stdout, quiet=args.quiet)  # the study's lines too
    printer.line(f"Study {plan.directory}: {len(plan.configurations)} configuration(s) × "
                 f"{plan.seeds} seed(s)")
    stop = StudyStop()
    previous = signal.signal(signal.SIGINT, stop)
    try:
        result = run_study(plan, [printer], stop.new_control, StudyPrinter(printer),
                           share=not args.no_share)
    except StudyError as e:
        return bad_input(f"study: {e}")
    finally:
        signal.signal(signal.SIGINT, previous)
    if result.status == "finished":
        printer.line(study_overview(result.table))
        printer.line(f"Study finished; tables in {plan.directory}")
    elif result.status == "cancelled":
        printer.line(f"Study stopped; go on with 'ashem-engine study --resume {plan.directory}'")
    else:
        print(f"ashem-engine: error: study: {result.error.message}", file=sys.stderr)
    return exit_code(result.status, result.error.error_kind if result.error else None)


# The commands besides run and resume, by name.
COMMANDS = {"init": lambda args: init(args.file), "study": study, "export": export}


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command in COMMANDS:
        return COMMANDS[args.command](args)
    if args.command not in ("run", "resume"):
        parser.print_help(sys.stderr)
        return EXIT_BAD_INPUT
    settings = None
    if args.command == "run":
        path, notice = choose_settings_file(args.settings)
        try:
            settings = load_settings(path, args.overrides)
        except SettingsError as e:
            return bad_input(e)
        if notice and os.environ.get("RANK", "0") == "0":
            print(f"ashem-engine: {notice}", file=sys.stderr)

    from .dist import World, launched_by_torchrun, leave, stop_on_terminate
    from .run import resume_ashem, run_ashem  # torch loads here, after the cheap checks

    if launched_by_torchrun():
        stop_on_terminate()

    control = RunControl(pause_at=None, hold_at_boundaries=args.hold)  # the run's own pause_at

    def on_interrupt(signum, frame):
        if control.cancelled:
            raise KeyboardInterrupt
        control.cancel()

    previous = signal.signal(signal.SIGINT, on_interrupt)
    sinks = build_sinks(progress=sys.stdout, quiet=args.quiet)
    try:
        if settings is not None:
            result = run_ashem(settings, sinks, control)
        else:
            result = resume_ashem(args.run_dir, sinks, control)
    finally:
        signal.signal(signal.SIGINT, previous)
        if launched_by_torchrun():  # finished either way: say so, even when told to stop
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        world = World.current()
        leave()
    if args.quiet and result.status == "finished" and world.lead:
        print(format_table(result.summary))
    if result.status == "failed":  # under torchrun every rank says why it stopped
        rank = f" (rank {world.rank} of {world.size})" if world.parallel else ""
        print(f"ashem-engine: error{rank}: {result.error.message}", file=sys.stderr)
    return exit_code(result.status, result.error.error_kind if result.error else None)


if __name__ == "__main__":
    sys.exit(main())
