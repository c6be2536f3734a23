"""Headless command line: `ashem-engine run [--settings F] [--set table.key=value]...`,
`ashem-engine resume RUN_DIR`, `ashem-engine study SETTINGS... --seeds N` and
`ashem-engine init [FILE]`.

Just one more consumer of the engine's events: it prints progress lines like the spec's
debug prints and ends with the table of the spec's figures against this run's. A headless
run holds at the stage boundaries in `run.pause_at` only with `--hold`, until a dashboard
attached with `ashem --attach RUN_DIR` continues it; any headless run obeys the commands such
a dashboard writes (commands.py). Exit codes: `exitcodes.exit_code`, the rule of `ashem`.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path
from typing import Optional, Sequence, TextIO

from . import events as ev
from .control import RunControl
from .exitcodes import EXIT_BAD_INPUT, EXIT_OK, exit_code
from .reference import format_table
from .settings import (LOCAL_FILE, SettingsError, choose_settings_file, load_settings,
                       settings_from_dict, write_default_settings)


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
    run.add_argument("--quiet", action="store_true", help="print only the final table")
    run.add_argument("--hold", action="store_true", help=HOLD_HELP)
    resume = sub.add_parser("resume", help="continue a cancelled or killed run")
    resume.add_argument("run_dir", help="the run directory, e.g. runs/20261125T180000Z-ashem")
    resume.add_argument("--quiet", action="store_true", help="print only the final table")
    resume.add_argument("--hold", action="store_true", help=HOLD_HELP)
    add_study_parser(sub)
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
SETTINGS...' adds configurations to a study (its seeds and overrides) and goes on with it."""


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
    study.add_argument("--quiet", action="store_true",
                       help="only the study's own lines, not each run's progress")


class ProgressPrinter:
    """Formats events as the spec's debug prints."""

    def __init__(self, out: TextIO, quiet: bool = False):
        self.out = out
        self.quiet = quiet
        self.tty = out.isatty()
        self._quarter: dict = {}
        self.run_dir = "RUN_DIR"

    def line(self, text: str) -> None:
        if self.tty:
            self.out.write("\r\033[K")
        self.out.write(text + "\n")
        self.out.flush()

    def __call__(self, e: ev.Event) -> None:
        if self.quiet:
            return
        handler = getattr(self, f"on_{e.kind}", None)
        if handler:
            handler(e)

    def on_RunStarted(self, e: ev.RunStarted) -> None:
        self.run_dir = e.run_dir
        self.line(f"Run {e.name} -> {e.run_dir}")
        self.line(f"Device: {e.device}, {e.threads} threads; vocabulary {e.vocab_size:,}; "
                  f"{e.train_tokens:,} train / {e.val_tokens:,} validation tokens")

    def on_StageStarted(self, e: ev.StageStarted) -> None:
        self.line("=" * 60)
        self.line(f"Stage {e.stage}: {e.layers} layers, trainable {e.trainable_params:,} / "
                  f"{e.total_params:,}, lr {e.lr:.1e}, patience {e.patience}, "
                  f"{e.batches} batches ({e.training_tokens:,} tokens, {e.context} context)"
                  + (f"; {e.scope()}" if e.scope() else ""))

    def on_BatchProgress(self, e: ev.BatchProgress) -> None:
        text = (f"  stage {e.stage} epoch {e.epoch}: batch {e.batch}/{e.batches} "
                f"loss {e.loss:.3f}  {e.tokens_per_s:,.0f} tok/s  eta {e.eta_s:.0f}s")
        if self.tty:
            self.out.write("\r\033[K" + text)
            self.out.flush()
            return
        quarter = (4 * e.batch) // e.batches
        key = (e.stage, e.epoch)
        if quarter > self._quarter.get(key, 0) and e.batch < e.batches:
            self._quarter[key] = quarter
            self.line(text)

    def on_EpochEnded(self, e: ev.EpochEnded) -> None:
        verdict = "new best" if e.improved else \
            f"no improvement ({e.patience_counter}/{e.patience})"
        parts = [f"Epoch {e.epoch}", f"Train PPL: {e.train_ppl:.2f}",
                 f"Val PPL: {e.val_ppl:.2f}", f"Val Acc: {100 * e.val_acc:.2f}%"]
        if e.hard_ppl is not None:
            parts.append(f"Hard PPL: {e.hard_ppl:.2f}")
        if e.shallow_ratio is not None:
            parts.append(f"shallow {100 * e.shallow_ratio:.1f}%")
        self.line(" | ".join(parts) + f" | {verdict} | {e.seconds:.1f}s")

    def on_StageEnded(self, e: ev.StageEnded) -> None:
        stop = f"early stopping at epoch {e.epochs}" if e.stopped_early else \
            f"ran all {e.epochs} epochs"
        hard = f", hard PPL {e.best_hard_ppl:.2f}" if e.best_hard_ppl is not None else ""
        self.line(f"Stage {e.stage} done: best epoch {e.best_epoch}, best val PPL "
                  f"{e.best_val_ppl:.2f}, acc {100 * e.best_val_acc:.2f}%{hard}; {stop}; "
                  f"{e.seconds:.1f}s")

    def on_ThresholdComputed(self, e: ev.ThresholdComputed) -> None:
        self.line("=" * 60)
        self.line(f"Threshold: {e.threshold:.4f} (quantile {e.target_ratio:g} of {e.tokens:,} "
                  f"{e.split} token confidences at layer {e.exit_layer})")

    def on_HardExamplesCollected(self, e: ev.HardExamplesCollected) -> None:
        self.line(f"Hard examples: {e.count:,} / {e.total:,} ({100 * e.ratio:.1f}%), "
                  f"mean confidence {e.mean_confidence:.4f}, stage {e.stage} hard PPL "
                  f"{e.hard_ppl:.2f}")
        if e.top_words:
            self.line("  most frequent: " + ", ".join(f"{w} ({n})" for w, n in e.top_words[:8]))

    def on_Evaluated(self, e: ev.Evaluated) -> None:
        self.line("=" * 60)
        self.line(f"Final evaluation ({e.split}, {e.tokens:,} tokens): accuracy "
                  f"{100 * e.accuracy:.2f}%, PPL {e.ppl:.2f}")
        split = ", ".join(f"layer {layer}: {100 * r:.1f}%"
                          for layer, r in zip(e.exit_layers, e.exit_ratios))
        self.line(f"  exits: {split}")
        self.line(f"  compute cost {100 * e.compute_cost:.2f}% (spec formula, blocks only); "
                  f"honest cost {100 * e.honest_cost:.1f}% of the plain "
                  f"{e.exit_layers[-1]}-layer model (blocks and every head)")

    def on_SweepComputed(self, e: ev.SweepComputed) -> None:
        self.line(f"Threshold sweep ({e.split}): PPL at honest cost, % of the plain model")
        for series in e.series:
            points = series["points"]
            if len(points) > 5:  # a curve: its ends, quartiles and middle
                step = (len(points) - 1) / 4
                points = [points[round(k * step)] for k in range(5)]
            text = "  ".join(
                (f"q={p['quantile']:.2f} " if p["quantile"] is not None else "")
                + f"{p['ppl']:.1f}@{100 * p['honest_cost']:.1f}%"
                + ("*" if p["pareto"] else "") for p in points)
            self.line(f"  {series['name']}: {text}")
        self.line("  (* = Pareto-optimal; all points in sweep.json)")

    def on_Paused(self, e: ev.Paused) -> None:
        if e.reason == "pause_at":
            self.line(f"Holding at {e.boundary} ({e.where}): continue it with "
                      f"'ashem --attach {self.run_dir}' (c), or Ctrl-C to cancel")
        else:
            self.line(f"Paused at {e.where}")

    def on_Resumed(self, e: ev.Resumed) -> None:
        self.line(f"Resumed ({e.where})")

    def on_CommandObeyed(self, e: ev.CommandObeyed) -> None:
        value = f" {e.value:g}" if e.value is not None else ""
        origin = f" #{e.seq} from {e.writer}" if e.seq is not None else ""
        self.line(f"[command] {e.command}{value}{origin}")

    def on_CommandIgnored(self, e: ev.CommandIgnored) -> None:
        self.line(f"[warning] command ignored: {e.reason}")

    def on_SettingChanged(self, e: ev.SettingChanged) -> None:
        self.line(f"[setting] {e.key} = {e.value!r} (was {e.previous!r}); settings.json "
                  "rewritten")

    def on_Log(self, e: ev.Log) -> None:
        if e.level != "debug":
            self.line(f"[{e.level}] {e.message}")

    def on_RunFinished(self, e: ev.RunFinished) -> None:
        self.line("=" * 60)
        self.line(format_table(e.summary))
        self.line(f"Finished in {e.seconds:.1f}s; run directory {e.run_dir}")

    def on_RunCancelled(self, e: ev.RunCancelled) -> None:
        self.line(f"Cancelled at {e.where}; what was finished is in {e.run_dir}")


def bad_input(message: object) -> int:
    print(f"ashem-engine: error: {message}", file=sys.stderr)
    return EXIT_BAD_INPUT


def init(file: str) -> int:
    try:
        written = write_default_settings(file)
    except SettingsError as e:
        return bad_input(e)
    print(f"wrote {written}: the spec's set-up, one comment per key")
    return EXIT_OK


def _hold_points(args: argparse.Namespace, settings) -> tuple:
    """Where the run holds: with --hold, run.pause_at of its settings (a resumed run's own);
    else nowhere."""
    if not args.hold:
        return ()
    if settings is not None:
        return tuple(settings.run.pause_at)
    try:
        saved = json.loads((Path(args.run_dir) / "settings.json").read_text(encoding="utf-8"))
        return tuple(settings_from_dict(saved).run.pause_at)
    except (OSError, ValueError):  # SettingsError too: resume_ashem says what is wrong
        return ()


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
    """The placed study the arguments ask for, or an error line (StudyError)."""
    from .study import StudyError, grow_study, open_study, plan_study, reopen_study

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
        return grow_study(args.add, args.settings)
    if args.seeds is None:
        raise StudyError("give --seeds N, the seeds per configuration")
    return open_study(plan_study(args.settings, args.seeds, args.overrides, args.dir))


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

    printer = ProgressPrinter(sys.stdout, args.quiet)
    printer.line(f"Study {plan.directory}: {len(plan.configurations)} configuration(s) × "
                 f"{plan.seeds} seed(s)")
    stop = StudyStop()
    previous = signal.signal(signal.SIGINT, stop)
    try:
        result = run_study(plan, [printer], stop.new_control, StudyPrinter(printer))
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


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command in ("init", "study"):
        return init(args.file) if args.command == "init" else study(args)
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

    control = RunControl(pause_at=_hold_points(args, settings), hold_at_boundaries=args.hold)

    def on_interrupt(signum, frame):
        if control.cancelled:
            raise KeyboardInterrupt
        control.cancel()

    previous = signal.signal(signal.SIGINT, on_interrupt)
    printer = ProgressPrinter(sys.stdout, args.quiet)
    try:
        if settings is not None:
            result = run_ashem(settings, [printer], control)
        else:
            result = resume_ashem(args.run_dir, [printer], control)
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
