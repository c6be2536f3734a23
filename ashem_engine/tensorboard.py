"""TensorBoard: a run's figures as scalars, live (`run.loggers = ["tensorboard"]`, into
RUN_DIR/tensorboard) or afterwards from its events.jsonl (`ashem-engine export RUN_DIR
--tensorboard LOGDIR`). Both feed the same `ScalarMap`, so they write the same scalars.
The tensorboard package is the optional extra `ashem[tensorboard]`, imported only here,
only when a writer is made.

Tags (each scalar is a number field of an event, named by it; flags, text and lists left out):
- stage<N>/<field>: an epoch's figures (EpochEnded; memory peaks as stage<N>/memory/<peak>).
  Step: the epochs the run has finished, over its stages, this one included (stage 2's first
  epoch after 3 in stage 1 is step 4); an epoch run again after a kill keeps its step.
- stage<N>/result/<field>: the stage's end (StageEnded), at its last epoch's step.
- stage<N>/mining/<field>: the threshold and the hard tokens mined at stage N's exit
  (ThresholdComputed, HardExamplesCollected), at the step of the last epoch finished.
- final/<split>/<field>: the final report (Evaluated), with exit_ratio/layer<L> and
  threshold/layer<L> per exit, at the step of the last epoch finished.
- machine/<field>: MachineSampled, machine/cuda<i>/<field> per device; step: the whole
  seconds of the run clock.
Wall times are the run clock (seconds over the run's attempts: RunStarted.seconds_before +
the event's `t`) from an anchor: live, the wall time the attempt's RunStarted reached the
writer, less the run clock then; exported, the time events.jsonl last changed, less its last
run clock. So TensorBoard's relative axis reads the run's own time (exported, without the
pauses between attempts)."""
from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional

from . import events as ev
from .rundir import EVENTS_FILE
from .sinks import dispatch, install_hint

LIVE_DIR = "tensorboard"  # the live logger's directory, inside the run directory


class TensorBoardError(Exception):
    """Bad input to an export, or no tensorboard package. str(error) is one line."""


@dataclass(frozen=True)
class Scalars:
    """The scalars of one event: they share its step and its wall time."""
    values: dict[str, float]  # tag -> value
    step: int
    clock: float  # the run clock at the event: seconds over the run's attempts


def numbers(values: dict[str, Any], prefix: str, skip: Iterable[str] = ()) -> Iterator[tuple]:
    """(prefix/key, value) for each number of `values`, nested dicts' keys joined on."""
    for key, value in values.items():
        if key in skip or isinstance(value, bool):
            continue
        if isinstance(value, (int, float)):
            yield f"{prefix}/{key}", float(value)
        elif isinstance(value, dict):
            yield from numbers(value, f"{prefix}/{key}")


class ScalarMap:
    """Events, in order, to their scalars (the module's tags and steps): it keeps what a step
    and a wall time depend on, the epochs each stage has run and the run clock's start."""

    def __init__(self):
        self.stage_epochs: dict[int, int] = {}  # stage -> epochs finished
        self.step = 0  # the step of the last epoch finished
        self.seconds_before = 0.0  # the run's seconds before this attempt

    def clock(self, event: ev.Event) -> float:
        return self.seconds_before + event.t

    def __call__(self, event: ev.Event) -> Optional[Scalars]:
        found = dispatch(self, event)
        return None if found is None else Scalars(*found, self.clock(event))

    def _epoch_step(self, stage: int, epoch: int) -> int:
        self.stage_epochs[stage] = max(epoch, self.stage_epochs.get(stage, 0))
        self.step = epoch + sum(n for s, n in self.stage_epochs.items() if s < stage)
        return self.step

    def on_RunStarted(self, e: ev.RunStarted) -> None:
        self.seconds_before = e.seconds_before

    # Each on_<Kind> gives the event's scalars by tag and their step.
    def on_EpochEnded(self, e: ev.EpochEnded) -> tuple[dict, int]:
        found = dict(numbers(e.to_dict(), f"stage{e.stage}", skip=("t", "stage", "epoch")))
        return found, self._epoch_step(e.stage, e.epoch)

    def on_StageEnded(self, e: ev.StageEnded) -> tuple[dict, int]:
        found = dict(numbers(e.to_dict(), f"stage{e.stage}/result", skip=("t", "stage")))
        return found, self._epoch_step(e.stage, e.epochs)

    def _mining(self, e: ev.ThresholdComputed | ev.HardExamplesCollected) -> tuple[dict, int]:
        return dict(numbers(e.to_dict(), f"stage{e.stage}/mining", skip=("t", "stage"))), self.step

    on_ThresholdComputed = on_HardExamplesCollected = _mining

    def on_Evaluated(self, e: ev.Evaluated) -> tuple[dict, int]:
        prefix = f"final/{e.split}"
        found = dict(numbers(e.to_dict(), prefix, skip=("t",)))
        for name, values in (("exit_ratio", e.exit_ratios), ("threshold", e.thresholds)):
            found.update((f"{prefix}/{name}/layer{layer}", float(value))
                         for layer, value in zip(e.exit_layers, values) if value is not None)
        return found, self.step

    def on_MachineSampled(self, e: ev.MachineSampled) -> tuple[dict, int]:
        found = dict(numbers(e.to_dict(), "machine", skip=("t", "stage")))
        for number, device in enumerate(e.devices):
            index = device.get("index", number)
            found.update(numbers(device, f"machine/cuda{index}", skip=("index",)))
        return found, int(self.clock(e))


def _writer_parts() -> tuple:
    """tensorboard's event-file writer and its protocol buffers (the optional extra)."""
    try:
        from tensorboard.compat.proto.event_pb2 import Event
        from tensorboard.compat.proto.summary_pb2 import Summary
        from tensorboard.summary.writer.event_file_writer import EventFileWriter
    except ImportError:
        raise TensorBoardError("TensorBoard files need the tensorboard package: "
                               + install_hint("tensorboard")) from None
    return EventFileWriter, Event, Summary


class TensorBoardSink:
    """Writes each event's scalars to a new event file in `logdir` (made if missing; files
    there are kept, and TensorBoard reads them all as one run). `history`: events written
    before (a resumed run's), which only move the steps on; `anchor`: see the module."""

    def __init__(self, logdir: str | os.PathLike, history: Iterable[ev.Event] = (),
                 anchor: Optional[float] = None):
        writer_class, self._event, self._summary = _writer_parts()
        self.map, self.anchor, self.live, self.written = ScalarMap(), anchor, anchor is None, 0
        for event in history:
            self.map(event)
        self._writer = writer_class(str(logdir))

    def __call__(self, event: ev.Event) -> None:
        found = self.map(event)
        dispatch(self, event)
        if self.anchor is None:
            self.anchor = time.time() - self.map.clock(event)
        if found is None:
            return
        values = [self._summary.Value(tag=tag, simple_value=value)
                  for tag, value in found.values.items()]
        self._writer.add_event(self._event(wall_time=self.anchor + found.clock, step=found.step,
                                           summary=self._summary(value=values)))
        self._writer.flush()  # a reader (tensorboard --logdir) sees it now
        self.written += len(values)

    def on_RunStarted(self, e: ev.RunStarted) -> None:
        if self.live:  # each attempt from the wall time it starts at
            self.anchor = time.time() - self.map.clock(e)

    def close(self) -> None:
        self._writer.close()


def live_sink(run_dir: Path) -> TensorBoardSink:
    """The logger `run.loggers = ["tensorboard"]` makes: RUN_DIR/tensorboard, its steps going
    on from the events a resumed run's earlier attempts logged."""
    log = run_dir / EVENTS_FILE
    return TensorBoardSink(run_dir / LIVE_DIR, ev.read_events(log) if log.is_file() else ())


@dataclass(frozen=True)
class Exported:
    """What an export wrote: of how many events, how many scalars, in which file."""
    events: int
    scalars: int
    file: Path


def export(run_dir: str | os.PathLike, logdir: str | os.PathLike) -> Exported:
    """Writes a run directory's events.jsonl as one new event file in `logdir`, the scalars
    the live logger writes; the file appears whole (written beside it, then moved in)."""
    log = Path(run_dir) / EVENTS_FILE
    if not Path(run_dir).is_dir():
        raise TensorBoardError(f"{str(run_dir)!r} is not a run directory (no such directory)")
    if not log.is_file():
        raise TensorBoardError(f"{str(run_dir)!r} is not a run directory (no {EVENTS_FILE})")
    try:
        events = ev.read_events(log)
    except OSError as e:
        raise TensorBoardError(f"cannot read {str(log)!r}: {e.strerror}") from None
    target = Path(logdir)
    _writer_parts()  # the package is there, before LOGDIR is made
    try:
        target.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=".export-", dir=target))
    except OSError as e:
        raise TensorBoardError(f"cannot write TensorBoard files in {str(target)!r}: "
                               f"{e.strerror}") from None
    try:
        sink = TensorBoardSink(scratch, anchor=_export_anchor(log, events))
        for event in events:
            sink(event)
        sink.close()
        (written,) = scratch.iterdir()
        os.replace(written, target / written.name)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return Exported(len(events), sink.written, target / written.name)


def _export_anchor(log: Path, events: list[ev.Event]) -> float:
    """events.jsonl's last change, less the run clock at its last event."""
    run_clock = ScalarMap()
    for event in events:
        run_clock(event)
    return log.stat().st_mtime - (run_clock.clock(events[-1]) if events else 0.0)
