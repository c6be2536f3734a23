"""The steps of a run's plan (plan.py), one Pipeline method per kind: "train stage N", "mine
and grow N", "evaluate", "sweep". A step takes the RunState its predecessor left."""
from __future__ import annotations

import contextlib
import dataclasses
import os
import platform
import random
from dataclasses import asdict, dataclass, fields
from functools import partial
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch

from . import events as ev
from .exit_signals import SIGNALS
from . import plan
from .compare import mark_pareto
from .control import CommandRefused, RunControl
from .cascade import Cascade, evaluate, inference_modes
from .costs import CostModel
from .data import Batches, Corpus, DataError, describe_source, load_corpus
from .dist import World
from .joint import exit_weights, method_name
from .mining import (MiningPool, MiningResult, examples_in_context, exit_pass,
                     fitted_histogram, histogram, log_histogram, mine, pool, tokens_at,
                     top_words)
from .model import EarlyExitLM, count_parameters
from .resume import ResumePoint
from .rundir import (BEST_WEIGHTS_FILE, CLASSIFIERS_FILE, HARD_TOKENS_FILE, PROGRESS_FILE,
                     SETTINGS_FILE, SUMMARY_FILE, SWEEP_FILE, CheckpointError, atomic_torch_save,
                     STAGE_ONE_END_FILE, atomic_write_json, load_checkpoint)
from . import tile_probe
from .head import HeadTiles, tiles_in_use
from .memory import keep_freed_memory
from .tokens import cache_root
from .names import BF16, CLASSIFIER
from .precision import compute
from .settings import Settings
from .share import NotShared, copy_file, read_stage_one, stage_one_key, weights_fit
from .sinks import Emitter
from .stages import (HardTokenTask, JointTask, MaskedSequenceTask, RunTotals, SequenceTask,
                     run_stage)
from .summary import SummaryReducer
from .sweep import one_point_series, sweep, train_signal


def choose_threads(requested: int) -> int:
    """0 means: one intra-op thread per core this process may use (measured best here,
    see docs/REPRODUCTION.md), the cores shared among torchrun's processes on this machine."""
    if requested > 0:
        return requested
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, cores // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


def choose_device(requested: str) -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise DataError("run.device = 'cuda' but no CUDA device is available; use cpu or auto")
    return torch.device(requested)


@dataclass
class RunState:
    """What a step hands on to the next."""
    model: EarlyExitLM
    exit_layers: list[int]
    thresholds: list[float]
    final: Any = None  # the final evaluation, for the sweep


class Pipeline:
    """One run's steps and what they share, the corpus' batches on the run's device too."""

    def __init__(self, settings: Settings, run_dir: Path, emit: Emitter,
                 control: RunControl, reducer: SummaryReducer,
                 stage_one_from: Optional[Path] = None):
        self.settings, self.run_dir, self.emit = settings, run_dir, emit
        self.control, self.reducer = control, reducer
        self.stage_one_from = stage_one_from  # a run whose stage 1 this one takes (share.py)
        self.where = "start"  # where a failure happened, for its message
        self._batches: dict[str, Batches] = {}
        self.world = World.current()  # under torchrun, rank 0 alone writes files
        # stage N's hard tokens as kept on disk, and the mining pass they came from, while
        # in this attempt (a resumed attempt gets them again in _hard_tokens)
        self._kept: dict[int, dict] = {}
        self._pools: dict[int, MiningPool] = {}
        self.head_tiles: Optional[HeadTiles] = None  # run.head_tiles, once start() chose them

    def precision(self):
        """run.precision around the steps (autocast to bf16, or nothing), and the head's tiles."""
        scope = contextlib.ExitStack()
        scope.enter_context(compute(self.settings.run.precision, self.device))
        scope.enter_context(tiles_in_use(self.head_tiles))
        return scope

    # the method that runs each kind of step (named: bench/breakdown.py times them)
    RUNS = {plan.STAGE: "train_stage", plan.MINING: "mine_and_grow",
            plan.EVALUATION: "final_evaluation", plan.SWEEP: "threshold_sweep"}

    def steps(self, point: Optional[ResumePoint]) -> tuple[plan.Step, ...]:
        """The plan's steps still to run after `point` (all of them without one)."""
        steps = plan.of_settings(self.settings)
        return steps if point is None else steps[plan.resumes_at(steps, point.stage,
                                                                 point.stage_done):]

    def run(self, step: plan.Step, state: RunState) -> None:
        """One step, then the hold point after it (where a mining step's steering applies)."""
        try:
            getattr(self, self.RUNS[step.kind])(step, state)
            if step.boundary:
                self.control.boundary(step.boundary, step.where)
        finally:
            self.control.steering = None

    def start(self, corpus: Optional[Corpus], point: Optional[ResumePoint]) -> RunState:
        s, self.point = self.settings, point
        self.seconds_before = point.seconds_before if point is not None else 0.0
        self.totals = _totals_at(point)
        self.totals.clock = lambda: self.seconds_before + self.emit.elapsed()
        threads = choose_threads(s.run.threads)
        torch.set_num_threads(threads)
        keep_freed_memory()
        self.device = choose_device(s.run.device)
        random.seed(s.run.seed)
        np.random.seed(s.run.seed)
        torch.manual_seed(s.run.seed)
        self.corpus = self._load(corpus)
        self.head_tiles, tiles_from = self._head_tiles()
        self._announce(threads, tiles_from)
        if point is not None:
            return self._restore(point)
        exits = self._trained_exits()
        return RunState(self.new_model(exits[-1]), exits, [])

    def _load(self, corpus: Optional[Corpus]) -> Corpus:
        s, self.where = self.settings, "loading data"
        if corpus is None:
            self.emit(ev.Log("info", f"loading data from {describe_source(s.data)}"))
            corpus = load_corpus(s.data, builds=self.world.node_lead, wait=self.world.barrier)
        for key, split in (("mining.split", s.mining.split),
                           ("evaluation.split", s.evaluation.split)):
            if corpus.sizes[split][0] == 0:
                raise DataError(f"{key} = {split!r}, but the {split} split of {corpus.source} "
                                "is too small for one batch")
        for split in {"validation", s.mining.split, s.evaluation.split}:
            if corpus.sizes[split][0] < self.world.size:
                raise DataError(f"the {split} split has {corpus.sizes[split][0]} batches, fewer "
                                f"than the {self.world.size} processes sharing it; use fewer "
                                "processes or more data.eval_samples")
        return corpus

    def _head_tiles(self) -> tuple[HeadTiles, str]:
        """run.head_tiles for this run (tile_probe.py); under torchrun "auto" takes what a
        single process measured on this machine, else whole rows: every rank the same."""
        s, self.where = self.settings, "choosing the head's tiles"
        rows = s.data.micro_batch_size or max(1, s.data.batch_size // self.world.size)
        sizes = (rows * s.data.seq_len, rows)  # stage 1's batches, later stages' hard tokens
        setting = s.run.head_tiles
        args = (self.device, s.model.dim, len(self.corpus.vocab), sizes,
                s.run.precision == BF16, cache_root(s.data))
        if self.world.parallel and setting == tile_probe.AUTO:
            return tile_probe.known_or_rows(*args)
        return tile_probe.resolve(setting, *args, probing=lambda: self.emit(ev.Log(
            "info", "head tiles: timing whole rows against blocks on this machine, once "
                    "(seconds; later runs read the choice from the cache)")))

    def _announce(self, threads: int, tiles_from: str = "") -> None:
        s, corpus, point, sizes = self.settings, self.corpus, self.point, self.corpus.sizes
        machine = {"platform": platform.platform(), "processor": platform.processor() or
                   "unknown", "cpus": os.cpu_count(), "torch": torch.__version__,
                   "python": platform.python_version()}
        self.emit(ev.RunStarted(
            name=s.run.name, run_dir=str(self.run_dir), device=str(self.device),
            threads=threads, settings=s.to_dict(), vocab_size=len(corpus.vocab),
            train_tokens=sizes["train"][1], val_tokens=sizes["validation"][1],
            test_tokens=sizes["test"][1], resumed=point is not None,
            stages=[{"stage": i, "layers": st.layers, "max_epochs": st.max_epochs}
                    for i, st in enumerate(s.stages, 1)], machine=machine,
            data_source=corpus.source, seconds_before=self.seconds_before,
            resume_point=point.where() if point is not None else None,
            world_size=self.world.size, backend=self.world.backend,
            precision=s.run.precision, plan=[asdict(step) for step in plan.of_settings(s)],
            head_tiles={**self.head_tiles.describe(), "source": tiles_from}))
        if tiles_from in (tile_probe.PROBED, tile_probe.CACHED):
            self.emit(ev.Log("info", f"head tiles: training step {self.head_tiles.step}, "
                             f"statistics {self.head_tiles.stats} (run.head_tiles = \"auto\": "
                             f"{tiles_from} on this machine)"))
        self.emit(ev.Log("info", f"data: {corpus.source}; vocabulary {len(corpus.vocab):,}; "
                         f"{sizes['train'][0]} train and {sizes['validation'][0]} validation "
                         f"batches of {s.data.batch_size} × {s.data.seq_len}"))

    def _restore(self, point: ResumePoint) -> RunState:
        number = point.stage
        model = self.new_model(self._layers_of(number))
        try:
            model.load_state_dict(point.model if not point.stage_done else
                                  self.read_weights(self.best_checkpoint(number)))
        except RuntimeError as e:
            raise CheckpointError(f"the saved model does not fit the run's settings: "
                                  f"{str(e).splitlines()[0]}") from None
        if number > 1:
            self._freeze(model, number)
        torch.set_rng_state(point.rng)  # after building the skeleton, which draws from it
        self.emit(ev.Log("info", f"resumed at stage {number}, " + (
            "after the stage" if point.stage_done else f"after epoch {point.epoch}")))
        return RunState(model, list(point.exit_layers), list(point.thresholds))

    def train_stage(self, step: plan.Step, state: RunState) -> None:
        s, number = self.settings, step.stage
        st, self.where = s.stages[number - 1], f"stage {number}"
        if number == 1 and self.stage_one_from is not None and self._share_stage_one(state):
            return
        task = self._task(number, state)
        trainable, total = count_parameters(task.model)
        self.emit(ev.StageStarted(
            stage=number, layers=self._layers_of(number), trainable_params=trainable,
            total_params=total, lr=st.lr, patience=st.patience, max_epochs=st.max_epochs,
            training_tokens=sum(task.tokens_in(i) for i in range(task.num_batches())),
            batches=task.num_batches(), context=st.context or "sequence",
            held_bytes=int(self.world.max(task.held_bytes())),
            exits=state.exit_layers if s.joint.enabled else None,
            **({} if number == 1 else {"tokens": st.tokens, "trainable": st.trainable,
                                       "init": st.init, "freeze_head": st.freeze_head})))

        def save_best(epoch: int, weights: dict) -> None:
            self.save(self.best_checkpoint(number), {
                "model": weights, "stage": number, "layers": self._layers_of(number),
                "vocab_size": len(self.corpus.vocab), "exit_layers": state.exit_layers,
                "thresholds": state.thresholds, "best_epoch": epoch})

        outcome = run_stage(number, task, st, s.optimizer, self.control, self.emit,
                            s.run.progress_events_per_epoch, on_improved=save_best,
                            on_epoch_end=lambda progress: self.save_point(
                                number, progress["epoch"], False, state, progress),
                            resume=self._training_resume(number),
                            micro_batch_size=s.data.micro_batch_size,
                            compile_model=s.run.compile, totals=self.totals,
                            budget_macs=s.run.training_macs_budget)
        ended = {f.name: getattr(outcome, f.name) for f in fields(ev.StageEnded)
                 if hasattr(outcome, f.name)}  # every field but the checkpoint
        self.emit(ev.StageEnded(**ended, checkpoint=str(self.best_checkpoint(number))))
        self.write_summary()
        self.save_point(number, outcome.epochs, True, state)

    def _share_stage_one(self, state: RunState) -> bool:
        """Stage 1 taken from the run in stage_one_from instead of trained (share.py): its best
        weights copied here, its stage-1 events replayed, the random state and totals as it
        left them, so the run goes on as if it had trained stage 1 itself. False, with a
        warning saying why, where that run cannot give it: then stage 1 is trained."""
        donor = Path(self.stage_one_from)
        try:
            if self.world.parallel:
                raise NotShared("a run under torchrun trains its own")
            taken = read_stage_one(donor, stage_one_key(self.settings))
            if not weights_fit(state.model.state_dict(), taken.weights):
                raise NotShared("its weights do not fit this run's model")
        except NotShared as e:
            self.emit(ev.Log("warning", f"stage 1 not shared with {donor}: {e}; training it"))
            return False
        self.emit(ev.Log("info", f"stage 1 shared with {donor}: same stage-1 settings"))
        copy_file(donor / BEST_WEIGHTS_FILE.format(1), self.best_checkpoint(1))
        state.model.load_state_dict(taken.weights)
        for event in taken.events:
            if isinstance(event, ev.StageEnded):
                event.checkpoint, event.shared_from = str(self.best_checkpoint(1)), str(donor)
            self.emit(event)
        torch.set_rng_state(taken.end["rng"])
        for name, value in (taken.end.get("totals") or {}).items():
            setattr(self.totals, name, value)
        state.exit_layers = list(taken.end["exit_layers"])
        state.thresholds = list(taken.end["thresholds"])
        self.write_summary()
        self.save_point(1, taken.end["epoch"], True, state)
        return True

    def _training_resume(self, number: int) -> Optional[dict]:
        """run_stage's state to go on with, when the run resumes in the middle of stage N."""
        p, best = self.point, self.best_checkpoint(number)
        if p is None or p.stage != number or not p.mid_stage:
            return None
        best_state = self.world.lead_reads(
            lambda: load_checkpoint(best)["model"] if best.exists() else None)
        return {"epoch": p.epoch, "model": p.model, "optimizer": p.optimizer, "early": p.early,
                "best_state": best_state}

    def _task(self, number: int, state: RunState):
        """Stage N's training task: later stages train on the tokens mined before (in any attempt),
        or every token that reached the previous exit (tokens = "all"), each process its rows."""
        m, s = state.model, self.settings
        if number == 1 and s.joint.enabled:
            return JointTask(m, self.batches("train"), self.batches("validation"),
                             state.exit_layers, exit_weights(state.exit_layers, s.joint.weights))
        if number == 1:
            return SequenceTask(m, self.batches("train"), self.batches("validation"),
                                self.cascade(state, 1))
        st, source = s.stages[number - 1], self.batches(s.mining.split)
        kept, mined_from = self._hard_tokens(number, state, st.context != "sequence")
        self._pools.pop(number, None)  # the task keeps what it needs of the mining pass
        every = kept["every_positions"].to(self.device) if st.tokens == "all" else None
        common = dict(validation=self.batches("validation"), cascade=self.cascade(state, number))
        if st.context != "sequence":
            hard = tokens_at(mined_from, source.y, kept["positions"].to(self.device))
            if every is None:
                return HardTokenTask(m, hard, kept["order"], s.data.batch_size, **common)
            return HardTokenTask(m, hard, kept["every_order"], s.data.batch_size, **common,
                                 train=tokens_at(mined_from, source.y, every))
        shape, rows = source.x.shape, self.world.share(source.x.shape[1])
        mined = self._mask(source.tokens, kept["positions"].to(self.device))
        trained = mined if every is None else self._mask(source.tokens, every)
        lower = None if st.trainable == "all" else exit_pass(
            m, source, self.cascade(state, number - 1), self.check,
            rows=slice(rows.start, rows.stop)).hidden.view(shape[0], len(rows), shape[2], -1)
        return MaskedSequenceTask(m, lower, trained.view(shape), source, **common,
                                  hard=mined.view(shape))

    def _hard_tokens(self, number: int, state: RunState, needs_states: bool
                     ) -> tuple[dict, Optional[MiningPool]]:
        """Stage N's hard tokens as kept and, when training reads their states, the mining pass:
        this attempt's, or in a resumed one the same pass again with stage N-1's best weights."""
        kept, mined_from = self._kept.get(number), self._pools.get(number)
        if kept is None:
            path = self.run_dir / HARD_TOKENS_FILE.format(number)
            kept = self.world.lead_reads(lambda: _without_states(
                load_checkpoint(path, required="positions")))
        if needs_states and mined_from is None:
            mined_from = self._mining_pass_again(number, state)
        return kept, mined_from

    def _mining_pass_again(self, number: int, state: RunState) -> MiningPool:
        rng = torch.get_rng_state()  # a new model's init draws from it; the run must not
        lower = self.new_model(self.settings.stages[number - 2].layers).eval()
        torch.set_rng_state(rng)
        lower.load_state_dict(self.read_weights(self.best_checkpoint(number - 1)))
        source = self.batches(self.settings.mining.split)
        return pool(exit_pass(lower, source, self.cascade(state, number - 1), self.check),
                    source)

    def _mask(self, tokens: int, positions: torch.Tensor) -> torch.Tensor:
        mask = torch.zeros(tokens, dtype=torch.bool, device=self.device)
        mask[positions] = True
        return mask

    def mine_and_grow(self, step: plan.Step, state: RunState) -> None:
        """Mines at stage N-1's exit (the step's stage), then grows the model to stage N over
        what it freezes. While it holds after this, the hard ratio can be steered. A joint
        run's mining step calibrates its exit instead."""
        if self.settings.joint.enabled:
            return self.calibrate_exit(step, state)
        number = step.stage + 1
        st, self.where = self.settings.stages[number - 1], f"mining after stage {number - 1}"
        source = self.batches(self.settings.mining.split)
        passed = pool(exit_pass(state.model, source, self.cascade(state, number - 1),
                                self.check), source)
        mined = self._mine(number - 1, st.hard_ratio, passed, state.exit_layers[-1],
                           macs=self._mining_macs(state, number))
        if len(mined.hard) == 0:
            raise DataError(f"mining after stage {number - 1} found no hard tokens "
                            f"(threshold {mined.threshold:.4g}); raise stages."
                            f"{number}.hard_ratio")
        state.model = state.model.grow(st.layers, st.init or "fresh")
        self._freeze(state.model, number)
        state.exit_layers = [*state.exit_layers, st.layers]
        rng = torch.get_rng_state()  # the hard tokens' order is drawn from here, steered or not
        self._pools[number] = passed
        self._keep_hard(number, mined, state)
        self.control.steering = partial(self._steer, number, passed, state, rng)  # run() clears it

    def calibrate_exit(self, step: plan.Step, state: RunState) -> None:
        """A joint run's exit N (the step's stage): its threshold from stage N+1's hard_ratio,
        found and reported as mining finds it; nothing grows, freezes or trains after it."""
        exit_number = step.stage
        self.where = f"calibrating exit {exit_number}"
        source = self.batches(self.settings.mining.split)
        passed = pool(exit_pass(state.model, source, self.cascade(state, exit_number),
                                self.check), source)
        macs = {**self._mining_macs(state, exit_number + 1), "state_macs": 0.0}  # none kept
        mined = self._mine(exit_number, self.settings.stages[exit_number].hard_ratio, passed,
                           state.exit_layers[exit_number - 1], macs=macs)
        state.thresholds = [*state.thresholds[:exit_number - 1], mined.threshold]

    def _freeze(self, model: EarlyExitLM, number: int) -> None:
        """What stage N does not train: the embedding and the layers below its new ones (the
        head too with freeze_head), or nothing with stages.N.trainable = "all"."""
        st = self.settings.stages[number - 1]
        if st.trainable != "all":
            model.freeze_lower(self.settings.stages[number - 2].layers,
                               freeze_head=st.freeze_head)

    def _keep_hard(self, number: int, mined, state: RunState) -> None:
        """Stage N's hard tokens and threshold, on disk for its training and for a resume;
        with stages.N.tokens = "all" also the order of every token it trains on."""
        state.thresholds = [*state.thresholds[:number - 2], mined.threshold]
        hard = mined.hard  # every process knows these; hidden states stay where they are
        kept = {"targets": hard.targets.cpu(), "confidences": hard.confidences.cpu(),
                "positions": hard.positions.cpu(), "order": torch.randperm(len(hard)),
                "threshold": mined.threshold}
        if self.settings.stages[number - 1].tokens == "all":  # drawn after "order", unchanged
            kept.update(every_positions=mined.reached.cpu(),
                        every_order=torch.randperm(mined.total))
        self._kept[number] = kept
        self.save(self.run_dir / HARD_TOKENS_FILE.format(number), kept)
        self.save_point(number, 0, False, state, {"model": state.model.state_dict()})

    def _steer(self, number: int, passed, state: RunState, rng: torch.Tensor,
               ratio: float) -> Callable[[], None]:
        """A new hard ratio for stage N from the mining pass' confidences (the model does not run
        again): what applies it, as if the run started with it; CommandRefused if no token."""
        exit_layer = state.exit_layers[-2]
        y = self.batches(self.settings.mining.split).y
        mined = mine(passed, y, ratio, exit_layer)
        if len(mined.hard) == 0:
            raise CommandRefused(f"a hard ratio of {ratio:g} selects no token "
                                 f"(threshold {mined.threshold:.4g})")

        def apply() -> None:
            self._mine(number - 1, ratio, passed, exit_layer, mined,
                       macs=self._mining_macs(state, number))
            torch.set_rng_state(rng)
            self._keep_hard(number, mined, state)
            self._set_hard_ratio(number, ratio)
        return apply

    def _set_hard_ratio(self, number: int, ratio: float) -> None:
        stages = list(self.settings.stages)
        previous = stages[number - 1].hard_ratio
        stages[number - 1] = dataclasses.replace(stages[number - 1], hard_ratio=ratio)
        self.settings = self.settings.replace(stages=tuple(stages))
        if self.world.lead:
            atomic_write_json(self.run_dir / SETTINGS_FILE, self.settings.to_dict())
        self.emit(ev.SettingChanged(key=f"stages.{number}.hard_ratio", value=ratio,
                                    previous=previous))

    def _mining_macs(self, state: RunState, number: int) -> dict:
        """Forward MACs of the exit pass that mines stage N's hard tokens, as
        HardExamplesCollected's selection_macs (every token of the mining split computed to
        stage N-1's exit, each exit's head for every token) and state_macs (in the token
        context its blocks, which made the stored states stage N trains on; else 0)."""
        source = self.batches(self.settings.mining.split)
        costs = self.cascade(state, number - 1).costs(state.model, source.x.shape[-1])
        stored = self.settings.stages[number - 1].context != "sequence"
        return {"selection_macs": source.tokens * costs.compute_everything(),
                "state_macs": source.tokens * costs.blocks() if stored else 0.0}

    def _mine(self, stage: int, ratio: float, passed, exit_layer: int,
              mined: Optional[MiningResult] = None, macs: Optional[dict] = None
              ) -> MiningResult:
        """The threshold and hard tokens at `ratio` (`mined`: already selected, when steered) as
        ThresholdComputed and HardExamplesCollected; `macs`: the mining pass' (steered too), as
        _mining_macs gives them."""
        s, source = self.settings, self.batches(self.settings.mining.split)
        steered = mined is not None
        mined = mined or mine(passed, source.y, ratio, exit_layer)
        edges, counts = histogram(mined.confidences, s.mining.histogram_bins)
        zoom_edges, zoom_counts = fitted_histogram(mined.confidences, s.mining.histogram_bins,
                                                   mined.threshold)
        log_edges, log_counts = log_histogram(mined.confidences, s.mining.histogram_bins,
                                              zoom_edges[0], zoom_edges[-1])
        self.emit(ev.ThresholdComputed(
            stage=stage, exit_layer=exit_layer, threshold=mined.threshold, target_ratio=ratio,
            split=s.mining.split, tokens=mined.total, histogram_edges=edges,
            histogram_counts=counts, zoom_edges=zoom_edges, zoom_counts=zoom_counts,
            steered=steered, log_edges=log_edges, log_counts=log_counts))
        hard, count, nan, vocab = mined.hard, len(mined.hard), float("nan"), self.corpus.vocab
        hard_nll = passed.nll[hard.positions].double()
        self.emit(ev.HardExamplesCollected(
            stage=stage, count=count, total=mined.total, ratio=count / mined.total,
            mean_confidence=float(hard.confidences.mean()) if count else nan,
            hard_ppl=float(torch.exp(hard_nll.mean())) if count else nan, split=s.mining.split,
            top_words=top_words(hard.targets, vocab, s.mining.top_words),
            examples=examples_in_context(hard, self.corpus.batches[s.mining.split], vocab,
                                         s.mining.examples),
            **(macs or {})))
        return mined

    def final_evaluation(self, step: plan.Step, state: RunState) -> None:
        self.where = "final evaluation"
        split, cascade = self.settings.evaluation.split, self.cascade(state, len(state.exit_layers))
        exits, thresholds = state.exit_layers, state.thresholds
        final = evaluate(state.model, self.batches(split), cascade, self.check)
        state.final, ratios = final, final.exit_ratios
        self.emit(ev.Evaluated(
            split=split, tokens=final.tokens, accuracy=final.accuracy, ppl=final.ppl,
            exit_layers=exits, exit_ratios=ratios, shallow_ratio=ratios[0],
            deep_ratio=1.0 - ratios[0], compute_cost=final.spec_cost,
            honest_cost=final.honest_cost, thresholds=thresholds,
            macs_per_token=final.macs_per_token, inference_modes=list(cascade.modes)))

    def threshold_sweep(self, step: plan.Step, state: RunState) -> None:
        """PPL against honest cost over thresholds for each signal, beside the run's own point
        and the stage-1 model alone (none in a joint run, which has no stage-1 model of its
        own); on the report split, calibrated on the mining split."""
        self.where = "threshold sweep"
        s, final, exits = self.settings, state.final, state.exit_layers
        costs = self._costs(tuple(exits), self.cascade(state, len(exits)).modes)
        plain = costs.plain()
        if len(exits) == 1:
            name = f"plain model ({exits[0]} layers)"
            series = [one_point_series(name, final, costs, plain, exits[0])]
        else:
            as_run = f"{method_name(s)} · as run"
            series = [*self._swept_signals(state),
                      one_point_series(as_run, final, costs, plain, exits[-1])]
            if not s.joint.enabled:
                series.append(self._first_stage_alone(plain, exits[-1]))
        mark_pareto([p for x in series for p in x["points"]])
        self.emit(ev.SweepComputed(split=s.evaluation.split, tokens=final.tokens,
                                   plain_macs_per_token=plain, series=series))
        protocol = {"mining_split": s.mining.split, "evaluation_split": s.evaluation.split,
                    "inference": s.evaluation.inference,
                    "contexts": [st.context for st in s.stages[1:]],
                    "freeze_head": [st.freeze_head for st in s.stages[1:]]}
        if self.world.lead:
            atomic_write_json(self.run_dir / SWEEP_FILE, {
                "name": s.run.name, "run_dir": str(self.run_dir), "protocol": protocol,
                "split": s.evaluation.split, "tokens": final.tokens,
                "plain_macs_per_token": plain, "series": series})

    def _costs(self, exit_layers: tuple, modes: tuple) -> CostModel:
        seq_len = self.batches(self.settings.evaluation.split).x.shape[-1]
        return CostModel(self.settings.model, len(self.corpus.vocab), seq_len, exit_layers, modes)

    def _swept_signals(self, state: RunState) -> list[dict]:
        """One series per signal; a trained signal (exit_signals) is trained first."""
        s, m = self.settings, state.model
        mining, report = self.batches(s.mining.split), self.batches(s.evaluation.split)
        cascade = self.cascade(state, len(state.exit_layers))
        trained = {name: train_signal(m, mining, cascade, name, s.run.seed, self.check)
                   for name in s.evaluation.signals if SIGNALS[name].train is not None}
        if CLASSIFIER in trained:
            self.save(self.run_dir / CLASSIFIERS_FILE,
                      {"classifiers": [c.state_dict() for c in trained[CLASSIFIER]]})
        return sweep(m, mining, report, cascade, s.evaluation.signals, s.evaluation.sweep_points,
                     trained, self.check, method_name(s))

    def _first_stage_alone(self, plain: float, deepest: int) -> dict:
        layers = self.settings.stages[0].layers
        base = self.new_model(layers).eval()
        base.load_state_dict(self.read_weights(self.best_checkpoint(1)))
        report = self.batches(self.settings.evaluation.split)
        alone = evaluate(base, report, Cascade.of([layers]), self.check)
        name, costs = f"stage-1 model ({layers} layers)", self._costs((layers,), ())
        return one_point_series(name, alone, costs, plain, deepest)

    def _trained_exits(self) -> list[int]:
        """The exits stage 1 trains: its own; in a joint run every stage's."""
        s = self.settings
        return [st.layers for st in (s.stages if s.joint.enabled else s.stages[:1])]

    def _layers_of(self, number: int) -> int:
        """The model's layers while stage N trains (a joint run's: the last stage's)."""
        s = self.settings
        return s.stages[-1 if s.joint.enabled else number - 1].layers

    def new_model(self, layers: int) -> EarlyExitLM:
        return EarlyExitLM(len(self.corpus.vocab), layers, self.settings.model).to(self.device)

    def best_checkpoint(self, number: int) -> Path:
        return self.run_dir / BEST_WEIGHTS_FILE.format(number)

    def read_weights(self, checkpoint: Path) -> dict:
        """A checkpoint's weights, read by rank 0 and sent to every rank."""
        return self.world.lead_reads(lambda: load_checkpoint(checkpoint)["model"])

    def cascade(self, state: RunState, stages: int) -> Cascade:
        """The exits of the first `stages` stages, their layers run as inference runs them."""
        modes = inference_modes(self.settings.stages[:stages], self.settings.evaluation.inference)
        return Cascade.of(state.exit_layers[:stages], state.thresholds[:stages - 1], modes)

    def batches(self, split: str) -> Batches:
        """A split's batches on the run's device, read from the corpus on first use (a split
        no step needs, such as the report split until the final report, is never read)."""
        if split not in self._batches:
            self._batches[split] = self.corpus.batches[split].on(self.device)
        return self._batches[split]

    def check(self) -> None:
        self.control.checkpoint(self.where)

    def write_summary(self) -> dict:
        summary = self.reducer.summary
        if self.world.lead:
            atomic_write_json(self.run_dir / SUMMARY_FILE, summary)
        return summary

    def save(self, path: Path, obj: dict) -> None:
        if self.world.lead:
            atomic_torch_save(path, obj)

    def save_point(self, stage: int, epoch: int, stage_done: bool, state: RunState,
                   training: Optional[dict] = None) -> None:
        """`training`: "model", "optimizer" and "early", while the stage is under way."""
        training = training or {}
        point = vars(ResumePoint(
            stage, epoch, stage_done, state.exit_layers, state.thresholds, torch.get_rng_state(),
            self.seconds_before + self.emit.elapsed(), training.get("model"),
            training.get("optimizer"), training.get("early"), self.totals.kept()))
        self.save(self.run_dir / PROGRESS_FILE, point)
        if stage == 1 and stage_done:  # kept: what a run taking this stage 1 needs (share.py)
            self.save(self.run_dir / STAGE_ONE_END_FILE, point)


def _totals_at(point: Optional[ResumePoint]) -> RunTotals:
    """The run's totals where it starts: none yet, the resume point's, or unknown (None) where
    its progress.pt was written before they were kept."""
    if point is None:
        return RunTotals()
    return RunTotals(**point.totals) if point.totals is not None else RunTotals(None, None)


def _without_states(kept: dict) -> dict:
    """A stage's kept hard tokens without hidden states (runs written before this version
    kept them; they are computed again, so only positions and targets travel)."""
    return {k: v for k, v in kept.items() if k not in ("hidden", "every_hidden")}
