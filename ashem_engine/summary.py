"""summary.json as a reduction of the run's events (SummaryReducer, a sink): it cannot drift
from them. A resumed run's log holds every attempt; each RunStarted rewinds (plan.Rewind)."""
from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Iterable, Optional

from . import events as ev
from . import plan
from .rundir import EVENTS_FILE, SETTINGS_FILE, SWEEP_FILE
from .sinks import dispatch

NOTHING_DONE = {"stage": 0, "epoch": 0, "stage_done": True}  # the resume point of a new run
# What a stage's history keeps of each EpochEnded: summary.json's, and progress.pt's (stages.py).
EPOCH = ("epoch", "train_ppl", "val_ppl", "val_acc", "hard_ppl", "shallow_ratio", "improved",
         "seconds", "training_macs", "selection_macs", "lr")
STAGE = ("stage", "epochs", "best_epoch", "best_val_ppl", "best_val_acc", "best_hard_ppl",
         "stopped_early", "seconds", "training_macs", "selection_macs", "memory", "stopped_by")
FINAL = ("split", "tokens", "accuracy", "ppl", "exit_layers", "exit_ratios", "compute_cost",
         "honest_cost", "macs_per_token", "thresholds", "inference_modes")


SHARED_FROM = "stage_1_shared_from"  # summary.json's: the run whose stage 1 this one took


def shared_stage_one(stages: list) -> dict:
    """{SHARED_FROM: its run directory} where stage 1's record says it was taken from another
    run (share.py; StageEnded.shared_from), else nothing."""
    return {SHARED_FROM: r["shared_from"] for r in stages
            if r["stage"] == 1 and r.get("shared_from")}


def base_summary(run_dir: str | os.PathLike, settings: dict) -> dict:
    """What is known before the first event (all a run that fails loading its data has)."""
    return {"status": "running", "run_dir": str(run_dir), "settings": settings, "stages": [],
            "mining": [], "final": None}


def reducer_from_log(run_dir: str | os.PathLike) -> SummaryReducer:
    """A reducer that has seen a run directory's events.jsonl so far (none in a new run)."""
    path = Path(run_dir)
    settings = json.loads((path / SETTINGS_FILE).read_text(encoding="utf-8"))
    log = path / EVENTS_FILE
    return SummaryReducer(base_summary(path, settings), ev.read_events(log) if log.exists() else ())


def rebuild(run_dir: str | os.PathLike) -> dict:
    """summary.json again, from a run directory's settings.json and events.jsonl."""
    return reducer_from_log(run_dir).summary


def _pick(event: ev.Event, names: Iterable[str]) -> dict:
    return {name: getattr(event, name) for name in names}


def _total(figures: list) -> Optional[float]:
    """Their sum; None if one is missing (a log written before MACs were counted)."""
    return None if None in figures else float(sum(figures))


def compute_spent(summary: dict) -> dict:
    """summary["training_macs"] (per stage and in all) and ["selection_macs"] (validation and
    hard PPL per stage, every mining pass) from its stage and mining records."""
    training = [r.get("training_macs") for r in summary["stages"]]
    stages = [r.get("selection_macs") for r in summary["stages"]]
    mining = [m.get("selection_macs") for m in summary["mining"]]
    return {"training_macs": {"stages": training, "total": _total(training)},
            "selection_macs": {"stages": stages, "mining": mining,
                               "total": _total(stages + mining)},
            "compute_macs": compute_charged(summary)}


COMPUTE_RULE = ("every pass counted once: as training if a stage's steps train on its result "
                "(their forward and backward, and the pass that made the states they read), "
                "else as selection (each epoch's validation and hard PPL, each mining pass); "
                "the final evaluation and the sweep are not counted")


def compute_charged(summary: dict) -> dict:
    """summary["compute_macs"] by COMPUTE_RULE: per stage its training_macs (steps, and a
    sequence context's own pass for its states) and selection_macs; per mining pass the part
    that made the states the next stage trains on (token context), charged as training, and
    the rest as selection; their totals (None where a figure is missing: an older log)."""
    stages = [{"stage": r["stage"], "training": r.get("training_macs"),
               "selection": r.get("selection_macs")} for r in summary["stages"]]
    mining = [{"stage": m["stage"], "states": m.get("state_macs"),
               "selection": _minus(m.get("selection_macs"), m.get("state_macs"))}
              for m in summary["mining"]]
    training = _total([r["training"] for r in stages] + [m["states"] for m in mining])
    selection = _total([r["selection"] for r in stages] + [m["selection"] for m in mining])
    return {"training": training, "selection": selection,
            "total": _total([training, selection]), "rule": COMPUTE_RULE,
            "stages": stages, "mining": mining}


def _minus(a: Optional[float], b: Optional[float]) -> Optional[float]:
    return None if a is None or b is None else a - b


class SummaryReducer:
    """A sink folding events into the summary; an event it does not read costs a lookup."""

    def __init__(self, base: dict, events: Iterable[ev.Event] = ()):
        self._s = copy.deepcopy(base)
        self._epochs: dict[int, list[dict]] = {}  # stage -> its epochs so far
        self._thresholds: dict[int, ev.ThresholdComputed] = {}
        self._layers: dict[int, int] = {}  # stage -> the layers its StageStarted trained
        self._before = 0.0  # seconds of the attempts before this one
        self._peaks: dict[str, int] = {}  # summary["memory"]: the most any attempt held
        for event in events:
            self(event)

    @property
    def summary(self) -> dict:
        return copy.deepcopy(self._s)

    def after(self, event: ev.Event) -> dict:
        """The summary once `event` is reduced too (RunFinished carries it)."""
        ahead = copy.deepcopy(self)
        ahead(event)
        return ahead._s

    def __call__(self, event: ev.Event) -> None:
        dispatch(self, event)  # one on_<Kind> method per event kind it reads

    def on_RunStarted(self, e: ev.RunStarted) -> None:
        point = e.resume_point if e.resumed else NOTHING_DONE
        if point is not None:  # None: logged before resume points were; redone records replace
            self._rewind(plan.rewind(plan.of_run(e), point))
        self._s = {"status": "running", "run_dir": e.run_dir, "settings": e.settings,
                   "stages": self._s["stages"], "mining": self._s["mining"], "final": None,
                   **_pick(e, ("machine", "device", "threads", "data_source", "vocab_size")),
                   **shared_stage_one(self._s["stages"])}
        self._s.update(compute_spent(self._s))
        if e.resumed:
            self._s["seconds_before"] = e.seconds_before
        if self._peaks:
            self._s["memory"] = dict(self._peaks)
        self._before = e.seconds_before

    def _rewind(self, rewind: plan.Rewind) -> None:
        self._s["stages"] = [r for r in self._s["stages"] if rewind.keeps(plan.STAGE, r["stage"])]
        self._s["mining"] = [m for m in self._s["mining"] if rewind.keeps(plan.MINING, m["stage"])]
        self._epochs = {n: [h for h in epochs if rewind.keeps_epoch(n, h["epoch"])]
                        for n, epochs in self._epochs.items() if rewind.keeps_start(n)}

    def on_StageStarted(self, e: ev.StageStarted) -> None:
        self._layers[e.stage] = e.layers  # a joint run's stage 1: the whole model's

    def on_EpochEnded(self, e: ev.EpochEnded) -> None:
        before = [h for h in self._epochs.get(e.stage, []) if h["epoch"] < e.epoch]
        self._epochs[e.stage] = [*before, _pick(e, EPOCH)]

    def _note_peaks(self, memory: Optional[dict]) -> None:
        """summary["memory"]: the run's peaks (resident memory; on CUDA the device's), the
        largest an epoch, a stage or a machine sample reported, over every attempt."""
        for key, value in (memory or {}).items():
            self._peaks[key] = max(value, self._peaks.get(key, 0))
        if self._peaks:
            self._s["memory"] = dict(self._peaks)

    def on_MachineSampled(self, e: ev.MachineSampled) -> None:
        self._note_peaks({"peak_rss_bytes": e.peak_rss_bytes})
        for device in e.devices:
            self._note_peaks({k: device[k] for k in ("peak_allocated_bytes",
                                                     "peak_reserved_bytes") if k in device})

    def on_StageEnded(self, e: ev.StageEnded) -> None:
        self._note_peaks(e.memory)
        record = {**_pick(e, STAGE), "history": list(self._epochs.get(e.stage, [])),
                  "layers": self._layers.get(e.stage,
                                             self._s["settings"]["stages"][e.stage - 1]["layers"]),
                  "checkpoint": e.checkpoint,
                  **({"shared_from": e.shared_from} if e.shared_from else {})}
        self._s["stages"] = [*(r for r in self._s["stages"] if r["stage"] < e.stage), record]
        self._s.pop(SHARED_FROM, None)
        self._s.update(shared_stage_one(self._s["stages"]))
        self._s["seconds"] = round(self._before + e.t, 3)
        self._s.update(compute_spent(self._s))

    def on_ThresholdComputed(self, e: ev.ThresholdComputed) -> None:
        self._thresholds[e.stage] = e

    def on_HardExamplesCollected(self, e: ev.HardExamplesCollected) -> None:
        threshold = _pick(self._thresholds[e.stage], ("exit_layer", "threshold", "target_ratio"))
        found = _pick(e, ("split", "count", "total", "ratio", "mean_confidence", "hard_ppl",
                          "selection_macs", "state_macs"))
        record = {"stage": e.stage, **threshold, **found}
        self._s["mining"] = [*(m for m in self._s["mining"] if m["stage"] < e.stage), record]
        self._s.update(compute_spent(self._s))

    def on_SettingChanged(self, e: ev.SettingChanged) -> None:
        """A setting changed while the run held (a steered hard ratio): as settings.json."""
        table, *path = e.key.split(".")
        try:
            where = self._s["settings"][table]
            if table == "stages":
                where, path = where[int(path[0]) - 1], path[1:]
            where[path[0]] = e.value
        except (KeyError, IndexError, ValueError, TypeError):  # a key of another version
            pass

    def on_Evaluated(self, e: ev.Evaluated) -> None:
        self._s["final"] = _pick(e, FINAL)

    def on_SweepComputed(self, e: ev.SweepComputed) -> None:
        self._s["sweep"] = str(Path(self._s["run_dir"]) / SWEEP_FILE)

    def on_RunFinished(self, e: ev.RunFinished) -> None:
        self._s.update(status="finished", seconds=round(self._before + e.seconds, 3))

    def on_RunCancelled(self, e: ev.RunCancelled) -> None:
        self._s.update(status="cancelled", seconds=round(self._before + e.seconds, 3))

    def on_RunFailed(self, e: ev.RunFailed) -> None:
        self._s["error"] = {"kind": e.error_kind, "message": e.message, "where": e.where}
        self._s.update(status="failed", seconds=round(self._before + e.t, 3))

