"""The orchestrator: settings + sinks + control -> a run directory and a result.

Stages are a list: stage 1 trains the first model on every train token; every later stage
mines the hard tokens at the previous exit, grows the model, hard-freezes what was there and
trains the new layers on those tokens; validation routes through every exit so far. Then the
final routed evaluation. Every figure goes out as an event; nothing is printed.
"""
from __future__ import annotations

import json
import os
import platform
import random
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional

import numpy as np
import torch

from . import events as ev
from .control import Cancelled, RunControl
from .data import Corpus, DataError, load_corpus
from .mining import (HardTokens, MiningResult, exit_pass, examples_in_context, histogram, mine,
                     top_words)
from .model import EarlyExitLM, count_parameters
from .rundir import (CheckpointError, RunDirError, atomic_torch_save, atomic_write_json,
                     create_run_dir, load_checkpoint, probe_writable)
from .compare import SWEEP_FILE, mark_pareto
from .cascade import Cascade, evaluate, inference_modes
from .costs import CostModel
from .names import CLASSIFIER
from .settings import Settings, SettingsError, settings_from_dict
from .sweep import single_point, sweep, train_classifiers
from .stages import HardTokenTask, MaskedSequenceTask, NumericFault, SequenceTask, run_stage


@dataclass
class RunResult:
    status: str  # "finished", "cancelled" or "failed"
    run_dir: Optional[Path]
    summary: dict = field(default_factory=dict)
    error: Optional[ev.RunFailed] = None


def choose_threads(requested: int) -> int:
    """0 means: one intra-op thread per core this process may use (measured best here,
    see docs/REPRODUCTION.md)."""
    if requested > 0:
        return requested
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def choose_device(requested: str) -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise DataError("run.device = 'cuda' but no CUDA device is available; use cpu or auto")
    return torch.device(requested)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def machine_description() -> dict:
    return {"platform": platform.platform(), "processor": platform.processor() or "unknown",
            "cpus": os.cpu_count(), "torch": torch.__version__,
            "python": platform.python_version()}


PROGRESS = "progress.pt"


def run_ashem(settings: Settings, sinks: Iterable[ev.Sink] = (),
              control: Optional[RunControl] = None, corpus: Optional[Corpus] = None
              ) -> RunResult:
    """Runs every stage in a new run directory; never raises for cancel or failure
    (see RunResult.status)."""
    sinks = list(sinks)
    try:
        run_dir = create_run_dir(settings.run.runs_dir, settings.run.name)
    except RunDirError as e:
        return _failed_before_start(sinks, "run_dir", str(e))
    atomic_write_json(run_dir / "settings.json", settings.to_dict())
    return _drive(settings, run_dir, sinks, control, corpus, resume=None)


def resume_ashem(run_dir: str | os.PathLike, sinks: Iterable[ev.Sink] = (),
                 control: Optional[RunControl] = None, corpus: Optional[Corpus] = None
                 ) -> RunResult:
    """Continues a cancelled or killed run from its last finished epoch (or stage), in the
    same run directory, with the settings it was started with."""
    sinks = list(sinks)
    try:
        settings, progress = read_resume_point(run_dir)
        probe_writable(Path(run_dir))
    except (ResumeError, RunDirError, SettingsError, CheckpointError) as e:
        return _failed_before_start(sinks, "resume", str(e))
    return _drive(settings, Path(run_dir), sinks, control, corpus, resume=progress)


class ResumeError(Exception):
    """A run directory that cannot be resumed. str(error) is one line for a person."""


def read_resume_point(run_dir: str | os.PathLike) -> tuple[Settings, Optional[dict]]:
    path = Path(run_dir)
    if not path.is_dir():
        raise ResumeError(f"run directory {str(path)!r} does not exist")
    try:
        raw = json.loads((path / "settings.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ResumeError(f"{str(path)!r} is not an ashem run directory (no settings.json)"
                          ) from None
    except ValueError as e:
        raise ResumeError(f"{str(path / 'settings.json')!r} is not valid JSON: {e}") from None
    settings = settings_from_dict(raw)
    try:
        summary = json.loads((path / "summary.json").read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):
        summary = {}
    if summary.get("status") == "finished":
        raise ResumeError(f"run {str(path)!r} has already finished; nothing to resume")
    if not (path / PROGRESS).exists():
        return settings, None  # killed before its first epoch ended: start over in place
    return settings, load_checkpoint(path / PROGRESS)


def _failed_before_start(sinks: list, kind: str, message: str) -> RunResult:
    failure = ev.RunFailed(error_kind=kind, message=message, where="start")
    for sink in sinks:
        sink(failure)
    return RunResult("failed", None, error=failure)


def _drive(settings: Settings, run_dir: Path, sinks: list, control: Optional[RunControl],
           corpus: Optional[Corpus], resume: Optional[dict]) -> RunResult:
    control = control or RunControl(pause_at=settings.run.pause_at)
    jsonl = ev.JsonLinesSink(run_dir / "events.jsonl")
    emit = ev.Emitter(jsonl, *sinks)
    control.on_pause = lambda where, reason, boundary: emit(
        ev.Paused(where=where, reason=reason, boundary=boundary))
    control.on_resume = lambda where: emit(ev.Resumed(where=where))
    pipeline = Pipeline(settings, run_dir, emit, control)
    try:
        summary = pipeline.run(corpus, resume)
        emit(ev.RunFinished(run_dir=str(run_dir), seconds=round(emit.elapsed(), 3),
                            summary=summary))
        return RunResult("finished", run_dir, summary)
    except Cancelled as c:
        pipeline.write_summary("cancelled")
        emit(ev.RunCancelled(run_dir=str(run_dir), where=c.where,
                             seconds=round(emit.elapsed(), 3)))
        return RunResult("cancelled", run_dir, pipeline.summary)
    except (DataError, NumericFault, RunDirError, CheckpointError) as e:
        kind = {DataError: "data", NumericFault: "numeric", RunDirError: "run_dir",
                CheckpointError: "checkpoint"}[type(e)]
        return pipeline.fail(kind, str(e), getattr(e, "where", pipeline.where))
    except Exception as e:  # anything unexpected still ends as an event, not a traceback
        tb = traceback.extract_tb(e.__traceback__)
        origin = f"{Path(tb[-1].filename).name}:{tb[-1].lineno}" if tb else "?"
        return pipeline.fail("internal", f"{type(e).__name__}: {e}",
                             f"{pipeline.where} ({origin})")
    finally:
        jsonl.close()
        control.on_pause = control.on_resume = None


class Pipeline:
    """One run, stage by stage. Everything needed to continue after a finished epoch or
    stage goes to progress.pt (and the mined tokens of a stage to stage-N-hard.pt)."""

    def __init__(self, settings: Settings, run_dir: Path, emit: ev.Emitter,
                 control: RunControl):
        self.s = settings
        self.run_dir = run_dir
        self.emit = emit
        self.control = control
        self.where = "start"
        self.summary: dict = {"status": "running", "run_dir": str(run_dir),
                              "settings": settings.to_dict(), "stages": [], "mining": [],
                              "final": None, "machine": machine_description()}

    def fail(self, kind: str, message: str, where: str) -> RunResult:
        failure = ev.RunFailed(error_kind=kind, message=message, where=where,
                               run_dir=str(self.run_dir))
        self.summary["error"] = {"kind": kind, "message": message, "where": where}
        self.write_summary("failed")
        self.emit(failure)
        return RunResult("failed", self.run_dir, self.summary, failure)

    def write_summary(self, status: str) -> None:
        self.summary["status"] = status
        self.summary["seconds"] = round(self.summary.get("seconds_before", 0.0)
                                        + self.emit.elapsed(), 3)
        atomic_write_json(self.run_dir / "summary.json", self.summary)

    def log(self, message: str, level: str = "info") -> None:
        self.emit(ev.Log(level=level, message=message))

    def save_progress(self, **point) -> None:
        point["rng"] = torch.get_rng_state()
        point["summary"] = json.dumps({k: self.summary[k] for k in ("stages", "mining")})
        point["seconds_before"] = self.summary.get("seconds_before", 0.0) + self.emit.elapsed()
        atomic_torch_save(self.run_dir / PROGRESS, point)

    # -------------------------------------------------------------------------------------
    def run(self, corpus: Optional[Corpus], resume: Optional[dict] = None) -> dict:
        s = self.s
        threads = choose_threads(s.run.threads)
        torch.set_num_threads(threads)
        device = choose_device(s.run.device)
        seed_everything(s.run.seed)
        self.where = "loading data"
        if corpus is None:
            source = s.data.path or os.environ.get("ASHEM_DATA") or "the hub"
            self.log(f"loading data from {source}")
            corpus = load_corpus(s.data)
        self.corpus = corpus
        for key, split in (("mining.split", s.mining.split),
                           ("evaluation.split", s.evaluation.split)):
            if corpus.sizes[split][0] == 0:
                raise DataError(f"{key} = {split!r}, but the {split} split of {corpus.source} "
                                "is too small for one batch")
        self._splits: dict = {}
        self.device = device
        sizes = corpus.sizes
        self.summary.update(device=str(device), threads=threads, data_source=corpus.source,
                            vocab_size=len(corpus.vocab))
        if resume is not None:
            restored = json.loads(resume["summary"])
            self.summary.update(restored)
            self.summary["seconds_before"] = resume["seconds_before"]
        self.emit(ev.RunStarted(
            name=s.run.name, run_dir=str(self.run_dir), device=str(device), threads=threads,
            settings=s.to_dict(), vocab_size=len(corpus.vocab),
            train_tokens=sizes["train"][1], val_tokens=sizes["validation"][1],
            test_tokens=sizes["test"][1],
            stages=[{"stage": i, "layers": st.layers, "max_epochs": st.max_epochs}
                    for i, st in enumerate(s.stages, 1)], resumed=resume is not None))
        self.log(f"data: {corpus.source}; vocabulary {len(corpus.vocab):,}; "
                 f"{sizes['train'][0]} train and {sizes['validation'][0]} validation "
                 f"batches of {s.data.batch_size} × {s.data.seq_len}")

        model: Optional[EarlyExitLM] = None
        exit_layers: list[int] = []
        thresholds: list[float] = []
        first = 1
        if resume is not None:
            first, model, exit_layers, thresholds = self.restore(resume)
        for number in range(first, len(s.stages) + 1):
            st = s.stages[number - 1]
            stage_resume = None
            if resume is not None and number == resume["stage"] and not resume["stage_done"]:
                stage_resume = resume
                task = self.task_for(number, model, exit_layers, thresholds)
            elif number == 1:
                model = EarlyExitLM(len(corpus.vocab), st.layers, s.model).to(device)
                exit_layers = [st.layers]
                task = self.task_for(1, model, exit_layers, thresholds)
            else:
                model, exit_layers, thresholds, task = self.grow_stage(
                    number, model, exit_layers, thresholds)
            self.train(number, task, exit_layers, thresholds, stage_resume)

        self.where = "final evaluation"
        split = s.evaluation.split
        modes = self.modes(len(s.stages))
        final = evaluate(model, self.split(split), Cascade.of(exit_layers, thresholds, modes),
                         check=lambda: self.control.checkpoint(self.where))
        ratios = final.exit_ratios
        self.emit(ev.Evaluated(
            split=split, tokens=final.tokens, accuracy=final.accuracy, ppl=final.ppl,
            exit_layers=exit_layers, exit_ratios=ratios, shallow_ratio=ratios[0],
            deep_ratio=1.0 - ratios[0], compute_cost=final.spec_cost,
            honest_cost=final.honest_cost, thresholds=thresholds))
        self.summary["final"] = {
            "split": split, "tokens": final.tokens, "accuracy": final.accuracy,
            "ppl": final.ppl, "exit_layers": exit_layers, "exit_ratios": ratios,
            "compute_cost": final.spec_cost, "honest_cost": final.honest_cost,
            "macs_per_token": final.macs_per_token, "thresholds": thresholds,
            "inference_modes": list(modes)}
        if s.evaluation.sweep_points:
            self.run_sweep(model, exit_layers, thresholds, modes, final)
        self.control.boundary("evaluation", "after the final evaluation")
        self.write_summary("finished")
        return self.summary

    def run_sweep(self, model: EarlyExitLM, exit_layers: list, thresholds: list, modes: tuple,
                  final) -> None:
        """PPL against honest cost for the signals of evaluation.signals over
        evaluation.sweep_points thresholds, the run's own point and the stage-1 model alone;
        all on the report split, calibrated on the mining split. -> sweep.json + an event."""
        s = self.s
        self.where = "threshold sweep"
        check = lambda: self.control.checkpoint(self.where)  # noqa: E731
        report, mining = self.split(s.evaluation.split), self.split(s.mining.split)
        cfg, vocab, seq_len = model.cfg, model.vocab_size, report.x.shape[-1]
        costs = CostModel(cfg, vocab, seq_len, tuple(exit_layers), modes)
        plain = costs.plain()
        series = []
        if len(exit_layers) > 1:
            classifiers = None
            if CLASSIFIER in s.evaluation.signals:
                classifiers = train_classifiers(model, mining, Cascade.of(
                    exit_layers, thresholds, modes), s.run.seed, check)
                atomic_torch_save(self.run_dir / "exit-classifiers.pt",
                                  {"classifiers": [c.state_dict() for c in classifiers]})
            series += sweep(model, mining, report, Cascade.of(exit_layers, thresholds, modes),
                            s.evaluation.signals, s.evaluation.sweep_points, classifiers, check)
            series.append(single_point("ASHEM · as run", final, costs, plain,
                                       exit_layers[-1]))
            first_layers = s.stages[0].layers
            base = EarlyExitLM(vocab, first_layers, s.model).to(self.device).eval()
            base.load_state_dict(load_checkpoint(self.run_dir / "stage-1-best.pt")["model"])
            alone = evaluate(base, report, Cascade.of([first_layers]), check)
            series.append(single_point(f"stage-1 model ({first_layers} layers)", alone,
                                       CostModel(cfg, vocab, seq_len, (first_layers,), ()),
                                       plain, exit_layers[-1]))
        else:
            series.append(single_point(f"plain model ({exit_layers[0]} layers)", final, costs,
                                       plain, exit_layers[0]))
        mark_pareto([p for x in series for p in x["points"]])
        self.emit(ev.SweepComputed(split=s.evaluation.split, tokens=final.tokens,
                                   plain_macs_per_token=plain, series=series))
        protocol = {"mining_split": s.mining.split, "evaluation_split": s.evaluation.split,
                    "inference": s.evaluation.inference,
                    "contexts": [st.context for st in s.stages[1:]],
                    "freeze_head": [st.freeze_head for st in s.stages[1:]]}
        atomic_write_json(self.run_dir / SWEEP_FILE, {
            "name": s.run.name, "run_dir": str(self.run_dir), "protocol": protocol,
            "split": s.evaluation.split, "tokens": final.tokens,
            "plain_macs_per_token": plain, "series": series})
        self.summary["sweep"] = str(self.run_dir / SWEEP_FILE)

    # -- the pieces of a stage ------------------------------------------------------------
    def grow_stage(self, number: int, model: EarlyExitLM, exit_layers: list[int],
                   thresholds: list[float]):
        """Mine at the previous exit, grow and freeze, fix the hard-token order, save."""
        st, below = self.s.stages[number - 1], self.s.stages[number - 2].layers
        mined = self.mine(model, number - 1, below, st.hard_ratio, exit_layers[:-1],
                          thresholds)
        thresholds = [*thresholds, mined.threshold]
        model = model.grow(st.layers)
        model.freeze_lower(below, freeze_head=st.freeze_head)
        exit_layers = [*exit_layers, st.layers]
        order = torch.randperm(len(mined.hard))
        hard = mined.hard
        atomic_torch_save(self.run_dir / f"stage-{number}-hard.pt", {
            "hidden": hard.hidden.cpu(), "targets": hard.targets.cpu(),
            "confidences": hard.confidences.cpu(), "positions": hard.positions.cpu(),
            "order": order, "threshold": mined.threshold})
        self.save_progress(stage=number, epoch=0, stage_done=False, model=model.state_dict(),
                           optimizer=None, early=None, exit_layers=exit_layers,
                           thresholds=thresholds)
        task = self.task_for(number, model, exit_layers, thresholds, hard=(hard, order))
        self.control.boundary(f"mining-{number - 1}",
                              f"after mining at stage {number - 1}'s exit")
        return model, exit_layers, thresholds, task

    def modes(self, stages: int) -> tuple:
        """Inference modes of the layers after each exit of the first `stages` stages."""
        return inference_modes(self.s.stages[:stages], self.s.evaluation.inference)

    def task_for(self, number: int, model: EarlyExitLM, exit_layers, thresholds, hard=None):
        """The training task of a stage; `hard` = (HardTokens, order) just mined, else they
        are read back from stage-N-hard.pt (resume)."""
        if number == 1:
            return SequenceTask(model, self.split("train"), self.split("validation"),
                                Cascade.of(exit_layers))
        if hard is None:
            saved = load_checkpoint(self.run_dir / f"stage-{number}-hard.pt",
                                    required="hidden")
            hard = (HardTokens(saved["hidden"].to(self.device),
                               saved["targets"].to(self.device),
                               saved["confidences"].to(self.device),
                               saved["positions"].to(self.device)), saved["order"])
        tokens, order = hard
        cascade = Cascade.of(exit_layers, thresholds, self.modes(number))
        if self.s.stages[number - 1].context == "sequence":
            source = self.split(self.s.mining.split)
            lower = exit_pass(model, source, Cascade.of(exit_layers[:-1], thresholds[:-1],
                                                        self.modes(number - 1))).hidden
            mask = torch.zeros(source.tokens, dtype=torch.bool, device=self.device)
            mask[tokens.positions] = True
            return MaskedSequenceTask(model, lower.view(*source.x.shape, -1),
                                      mask.view(source.x.shape), source,
                                      self.split("validation"), cascade)
        return HardTokenTask(model, tokens, order, self.s.data.batch_size,
                             self.split("validation"), cascade)

    def split(self, name: str):
        """A split's batches on the run's device, read from the corpus on first use (so a
        split no step needs, such as the report split until the final report, is never
        read)."""
        if name not in self._splits:
            self._splits[name] = _to(self.corpus.batches[name], self.device)
        return self._splits[name]

    def train(self, number: int, task, exit_layers, thresholds, resume: Optional[dict]):
        s, st, model = self.s, self.s.stages[number - 1], task.model
        trainable, total = count_parameters(model)
        self.where = f"stage {number}"
        self.emit(ev.StageStarted(
            stage=number, layers=st.layers, trainable_params=trainable,
            total_params=total, lr=st.lr, patience=st.patience, max_epochs=st.max_epochs,
            training_tokens=sum(task.tokens_in(i) for i in range(task.num_batches())),
            batches=task.num_batches(), context=st.context or "sequence"))
        checkpoint = self.run_dir / f"stage-{number}-best.pt"

        def save_best(epoch, state):
            atomic_torch_save(checkpoint, {
                "model": state, "stage": number, "layers": st.layers,
                "vocab_size": len(self.corpus.vocab), "exit_layers": exit_layers,
                "thresholds": thresholds, "best_epoch": epoch})

        def save_epoch(progress):
            self.save_progress(stage=number, stage_done=False, exit_layers=exit_layers,
                               thresholds=thresholds, **progress)

        if resume is not None and resume["epoch"] > 0 and checkpoint.exists():
            resume = {**resume, "best_state": load_checkpoint(checkpoint)["model"]}
        outcome = run_stage(number, task, st, s.optimizer, self.control, self.emit,
                            s.run.progress_events_per_epoch, on_improved=save_best,
                            on_epoch_end=save_epoch,
                            resume=resume if resume and resume["epoch"] > 0 else None)
        self.summary["stages"].append({**outcome.__dict__, "layers": st.layers,
                                       "checkpoint": str(checkpoint)})
        self.write_summary("running")
        self.save_progress(stage=number, epoch=outcome.epochs, stage_done=True, model=None,
                           optimizer=None, early=None, exit_layers=exit_layers,
                           thresholds=thresholds)
        self.emit(ev.StageEnded(
            stage=number, epochs=outcome.epochs, best_epoch=outcome.best_epoch,
            best_val_ppl=outcome.best_val_ppl, best_val_acc=outcome.best_val_acc,
            stopped_early=outcome.stopped_early, seconds=outcome.seconds,
            checkpoint=str(checkpoint), best_hard_ppl=outcome.best_hard_ppl))
        self.control.boundary(f"stage-{number}", f"after stage {number}")

    def restore(self, resume: dict):
        """The model and routing state at a resume point; returns the stage to go on with."""
        number = resume["stage"]
        st = self.s.stages[number - 1]
        torch.set_rng_state(resume["rng"])
        model = EarlyExitLM(len(self.corpus.vocab), st.layers, self.s.model).to(self.device)
        if resume["stage_done"]:
            state = load_checkpoint(self.run_dir / f"stage-{number}-best.pt")["model"]
        else:
            state = resume["model"]
        try:
            model.load_state_dict(state)
        except RuntimeError as e:
            raise CheckpointError(f"the saved model does not fit the run's settings: "
                                  f"{str(e).splitlines()[0]}") from None
        if number > 1:
            model.freeze_lower(self.s.stages[number - 2].layers,
                               freeze_head=st.freeze_head)
        torch.set_rng_state(resume["rng"])  # building the skeleton drew random numbers
        self.log(f"resumed at stage {number}, " + (
            "after the stage" if resume["stage_done"] else f"after epoch {resume['epoch']}"))
        next_stage = number + 1 if resume["stage_done"] else number
        return next_stage, model, list(resume["exit_layers"]), list(resume["thresholds"])

    def mine(self, model: EarlyExitLM, stage: int, exit_layer: int, ratio: float,
             earlier_exits: list[int], earlier_thresholds: list[float]) -> MiningResult:
        s, corpus = self.s, self.corpus
        self.where = f"mining after stage {stage}"
        split = s.mining.split
        source = self.split(split)
        check = lambda: self.control.checkpoint(self.where)  # noqa: E731
        passed = exit_pass(model, source, Cascade.of([*earlier_exits, exit_layer],
                                                     earlier_thresholds, self.modes(stage)), check)
        mined = mine(passed, source.y, ratio, exit_layer)
        edges, counts = histogram(mined.confidences, s.mining.histogram_bins)
        self.emit(ev.ThresholdComputed(
            stage=stage, exit_layer=exit_layer, threshold=mined.threshold, target_ratio=ratio,
            split=split, tokens=mined.total, histogram_edges=edges, histogram_counts=counts))
        hard = mined.hard
        nll = passed.stats.nll[hard.positions]
        hard_ppl = float(torch.exp(nll.double().mean())) if len(hard) else float("nan")
        count = len(hard)
        record = {"stage": stage, "exit_layer": exit_layer, "threshold": mined.threshold,
                  "target_ratio": ratio, "split": split, "count": count, "total": mined.total,
                  "ratio": count / mined.total,
                  "mean_confidence": float(hard.confidences.mean()) if count else float("nan"),
                  "hard_ppl": hard_ppl}
        self.summary["mining"] = [m for m in self.summary["mining"] if m["stage"] != stage]
        self.summary["mining"].append(record)
        self.emit(ev.HardExamplesCollected(
            stage=stage, count=count, total=mined.total, ratio=record["ratio"],
            mean_confidence=record["mean_confidence"], hard_ppl=hard_ppl, split=split,
            top_words=top_words(hard.targets, corpus.vocab, s.mining.top_words),
            examples=examples_in_context(hard, _to(source, "cpu"),
                                         corpus.vocab, s.mining.examples)))
        if count == 0:
            raise DataError(f"mining after stage {stage} found no hard tokens "
                            f"(threshold {mined.threshold:.4g}); raise stages."
                            f"{stage + 1}.hard_ratio")
        return mined


def _to(batches, device):
    from .data import Batches

    device = torch.device(device)
    if batches.x.device == device:
        return batches
    return Batches(batches.x.to(device), batches.y.to(device))
