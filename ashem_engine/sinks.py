"""Sinks: where a run's events go. `build_sinks` makes those a run asks for, for every entry
point; a consumer tells events apart by kind through `dispatch` (an `on_<Kind>` method each)."""
from __future__ import annotations

import importlib.util
import json
import os
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable, NamedTuple, Optional, Protocol, TextIO

from . import events as ev
from .reference import format_table
from .rundir import EVENTS_FILE


class Sink(Protocol):
    """Called with every event of a run, in order, one at a time (the Emitter's lock) on the
    engine's threads: the training thread (the run waits for it) and the machine sampler's.
    One that holds a file has `close()`, which the run calls when it ends."""

    def __call__(self, event: ev.Event) -> None: ...


def dispatch(handlers: Any, event: ev.Event, *args: Any, default: Any = None) -> Any:
    """`handlers.on_<Kind>(event, *args)` for the event's kind; `default` where it has none."""
    handle = getattr(handlers, f"on_{event.kind}", None)
    return default if handle is None else handle(event, *args)


class Logger(NamedTuple):
    """A logger besides events.jsonl, named in `run.loggers`."""
    make: Callable[[Path, Any], Sink]  # (run directory, settings) -> the sink, on rank 0
    extra: str = ""  # the optional extra of ashem it needs, named as the module it installs


def _tensorboard(run_dir: Path, settings: Any) -> Sink:
    from .tensorboard import live_sink  # tensorboard.py imports this module
    return live_sink(run_dir)


# The loggers a run can ask for, by the name `run.loggers` gives them.
LOGGERS: dict[str, Logger] = {"tensorboard": Logger(_tensorboard, extra="tensorboard")}


def install_hint(extra: str) -> str:
    return f'pip install "ashem[{extra}]" (from a checkout: pip install ".[{extra}]")'


def missing_extra(names: Iterable[str]) -> Optional[str]:
    """One line saying what to install, for the first named logger whose extra is missing."""
    for name in names:
        extra = LOGGERS[name].extra
        if extra and importlib.util.find_spec(extra) is None:
            return f"the {name} logger needs the {extra} package: {install_hint(extra)}"
    return None


def build_sinks(run_dir: Optional[Path] = None, summary: Optional[Sink] = None, *,
                settings: Any = None, progress: Optional[TextIO] = None, quiet: bool = False,
                extra: Iterable[Sink] = ()) -> list[Sink]:
    """In the order an event reaches them: given the run directory, its events.jsonl and the
    loggers the settings name (run.loggers); the summary; given a stream, progress lines on it
    (unless `quiet`); `extra`."""
    names = () if settings is None else settings.run.loggers
    files = [] if run_dir is None else [JsonLinesSink(run_dir / EVENTS_FILE),
                                        *(LOGGERS[name].make(run_dir, settings) for name in names)]
    printer = [] if progress is None else [ProgressPrinter(progress, quiet)]
    return [*files, *([] if summary is None else [summary]), *printer, *extra]


def close_sinks(sinks: Iterable[Sink]) -> None:
    for sink in sinks:
        if hasattr(sink, "close"):
            sink.close()


class Emitter:
    """Stamps events with the run clock and fans them out to sinks, one event at a time:
    events come from more than one thread (the training thread, machine.py's sampler), and
    each sink gets every event whole, in the order they were stamped. `annotate`, if given,
    sees each event first and may fill in its fields (machine.py: the memory peaks)."""

    def __init__(self, *sinks: Sink, clock: Callable[[], float] = time.perf_counter,
                 annotate: Optional[Callable[[ev.Event], None]] = None):
        self.sinks, self._clock, self.annotate = list(sinks), clock, annotate
        self._start = clock()
        self._lock = threading.RLock()  # re-entrant: a sink that emits does not deadlock

    def elapsed(self) -> float:
        return self._clock() - self._start

    def __call__(self, event: ev.Event) -> None:
        with self._lock:
            event.t = round(self.elapsed(), 3)
            if self.annotate is not None:
                self.annotate(event)
            for sink in self.sinks:
                sink(event)


class JsonLinesSink:
    """Appends one JSON object per line and flushes, so a reader can follow the file live."""

    def __init__(self, path: str | os.PathLike):
        self._file = open(path, "a+b")  # appends; binary, so the last byte can be read back
        if self._file.tell() > 0:
            self._file.seek(-1, os.SEEK_END)
            if self._file.read(1) != b"\n":  # torn by a kill: end it, or it swallows the next
                self._file.write(b"\n")

    def __call__(self, event: ev.Event) -> None:
        self._file.write((json.dumps(event.to_dict(), allow_nan=True) + "\n").encode())
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def peaks(memory: Optional[dict]) -> str:
    """EpochEnded.memory as a progress line's end: " | peak 412 MiB" (and the GPU's)."""
    if not memory:
        return ""
    text = f" | peak {memory['peak_rss_bytes'] / 2**20:,.0f} MiB"
    if "peak_allocated_bytes" in memory:
        text += f", GPU {memory['peak_allocated_bytes'] / 2**20:,.0f} MiB"
    return text


class ProgressPrinter:
    """Formats events as the spec's debug prints (`ashem-engine`, the bench scripts)."""

    def __init__(self, out: TextIO, quiet: bool = False):
        self.out, self.quiet, self.tty = out, quiet, out.isatty()
        self._quarter: dict = {}  # (stage, epoch) -> the last quarter of its batches printed
        self.run_dir = "RUN_DIR"

    def line(self, text: str) -> None:
        if self.tty:
            self.out.write("\r\033[K")
        self.out.write(text + "\n")
        self.out.flush()

    def __call__(self, e: ev.Event) -> None:
        if not self.quiet:
            dispatch(self, e)

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
        self.line(" | ".join(parts) + f" | {verdict} | {e.seconds:.1f}s" + peaks(e.memory))

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
