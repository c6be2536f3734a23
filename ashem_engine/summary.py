"""summary.json as a reduction of the run's events, so that it cannot drift from them.

The engine feeds every event it emits to a SummaryReducer and writes what it holds; the same
reduction over a run directory's events.jsonl (`rebuild`) gives the same summary. The log of a
resumed run holds every attempt: each RunStarted rewinds to its resume point, because what an
attempt reported beyond the point its successor resumed from is void (and is redone).
"""
from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Callable, Iterable, Optional

from . import events as ev
from .compare import SWEEP_FILE

EPOCH_FIELDS = ("epoch", "train_ppl", "val_ppl", "val_acc", "hard_ppl", "shallow_ratio",
                "improved", "seconds")
STAGE_FIELDS = ("stage", "epochs", "best_epoch", "best_val_ppl", "best_val_acc",
                "best_hard_ppl", "stopped_early", "seconds")
NOTHING_DONE = {"stage": 0, "epoch": 0, "stage_done": True}  # where a fresh start goes on
FINAL_FIELDS = ("split", "tokens", "accuracy", "ppl", "exit_layers", "exit_ratios",
                "compute_cost", "honest_cost", "macs_per_token", "thresholds",
                "inference_modes")


def base_summary(run_dir: str | os.PathLike, settings: dict) -> dict:
    """What is known before the first event: enough for a run that fails while loading."""
    return {"status": "running", "run_dir": str(run_dir), "settings": settings, "stages": [],
            "mining": [], "final": None}


def summarize(events: Iterable[ev.Event], base: dict) -> dict:
    """The summary of a run whose events these are (a pure function of its arguments)."""
    reducer = SummaryReducer(base)
    for event in events:
        reducer(event)
    return reducer.summary


def rebuild(run_dir: str | os.PathLike) -> dict:
    """summary.json again, from the run directory's settings.json and events.jsonl."""
    path = Path(run_dir)
    settings = json.loads((path / "settings.json").read_text(encoding="utf-8"))
    return summarize(ev.iter_events(path / "events.jsonl"), base_summary(path, settings))


def _pick(event: ev.Event, names: Iterable[str]) -> dict:
    return {name: getattr(event, name) for name in names}


class SummaryReducer:
    """A sink that folds events into the summary; events it does not need cost a dict lookup."""

    def __init__(self, base: dict):
        self._summary = copy.deepcopy(base)
        self._history: dict[int, list[dict]] = {}  # stage -> its epochs so far
        self._layers: dict[int, int] = {}
        self._thresholds: dict[int, ev.ThresholdComputed] = {}
        self._seconds_before = 0.0

    @property
    def summary(self) -> dict:
        return copy.deepcopy(self._summary)

    def after(self, event: ev.Event) -> dict:
        """The summary as it will be once `event` is reduced too (for RunFinished.summary)."""
        ahead = copy.deepcopy(self)
        ahead(event)
        return ahead._summary

    def __call__(self, event: ev.Event) -> None:
        handle = _HANDLERS.get(type(event))
        if handle is not None:
            handle(self, event)

    # -- one method per event kind the summary reads -----------------------------------
    def _started(self, e: ev.RunStarted) -> None:
        self._rewind(e.resume_point if e.resumed else NOTHING_DONE)
        self._summary = {
            "status": "running", "run_dir": e.run_dir, "settings": e.settings,
            "stages": self._summary["stages"], "mining": self._summary["mining"],
            "final": None, "machine": e.machine, "device": e.device, "threads": e.threads,
            "data_source": e.data_source, "vocab_size": e.vocab_size}
        if e.resumed:
            self._summary["seconds_before"] = e.seconds_before
        self._seconds_before = e.seconds_before

    def _rewind(self, point: Optional[dict]) -> None:
        if point is None:  # logged before resume points were: later records replace
            return
        stage, epoch, done = point["stage"], point["epoch"], point["stage_done"]
        last_done = stage if done else stage - 1
        s = self._summary
        s["stages"] = [r for r in s["stages"] if r["stage"] <= last_done]
        s["mining"] = [m for m in s["mining"] if m["stage"] < stage]
        self._history = {n: [h for h in epochs if n < stage or h["epoch"] <= epoch]
                         for n, epochs in self._history.items() if n <= stage}

    def _stage_started(self, e: ev.StageStarted) -> None:
        self._layers[e.stage] = e.layers

    def _epoch_ended(self, e: ev.EpochEnded) -> None:
        epochs = [h for h in self._history.get(e.stage, []) if h["epoch"] < e.epoch]
        self._history[e.stage] = [*epochs, _pick(e, EPOCH_FIELDS)]

    def _stage_ended(self, e: ev.StageEnded) -> None:
        record = {**_pick(e, STAGE_FIELDS), "history": list(self._history.get(e.stage, [])),
                  "layers": self._layers.get(e.stage), "checkpoint": e.checkpoint}
        kept = [r for r in self._summary["stages"] if r["stage"] < e.stage]
        self._summary["stages"] = [*kept, record]
        self._clock(e.t)

    def _threshold(self, e: ev.ThresholdComputed) -> None:
        self._thresholds[e.stage] = e

    def _hard_examples(self, e: ev.HardExamplesCollected) -> None:
        threshold = self._thresholds[e.stage]
        record = {"stage": e.stage, **_pick(threshold, ("exit_layer", "threshold",
                                                        "target_ratio")),
                  **_pick(e, ("split", "count", "total", "ratio", "mean_confidence",
                              "hard_ppl"))}
        kept = [m for m in self._summary["mining"] if m["stage"] < e.stage]
        self._summary["mining"] = [*kept, record]

    def _evaluated(self, e: ev.Evaluated) -> None:
        self._summary["final"] = _pick(e, FINAL_FIELDS)

    def _swept(self, e: ev.SweepComputed) -> None:
        self._summary["sweep"] = str(Path(self._summary["run_dir"]) / SWEEP_FILE)

    def _finished(self, e: ev.RunFinished) -> None:
        self._end("finished", e.seconds)

    def _cancelled(self, e: ev.RunCancelled) -> None:
        self._end("cancelled", e.seconds)

    def _failed(self, e: ev.RunFailed) -> None:
        self._summary["error"] = {"kind": e.error_kind, "message": e.message, "where": e.where}
        self._end("failed", e.t)

    def _end(self, status: str, seconds: float) -> None:
        self._summary["status"] = status
        self._clock(seconds)

    def _clock(self, seconds: float) -> None:
        self._summary["seconds"] = round(self._seconds_before + seconds, 3)


_HANDLERS: dict[type, Callable[[SummaryReducer, ev.Event], None]] = {
    ev.RunStarted: SummaryReducer._started, ev.StageStarted: SummaryReducer._stage_started,
    ev.EpochEnded: SummaryReducer._epoch_ended, ev.StageEnded: SummaryReducer._stage_ended,
    ev.ThresholdComputed: SummaryReducer._threshold,
    ev.HardExamplesCollected: SummaryReducer._hard_examples,
    ev.Evaluated: SummaryReducer._evaluated, ev.SweepComputed: SummaryReducer._swept,
    ev.RunFinished: SummaryReducer._finished, ev.RunCancelled: SummaryReducer._cancelled,
    ev.RunFailed: SummaryReducer._failed,
}
