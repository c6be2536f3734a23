"""One training loop for every stage: epochs, validation, early stopping, best weights.

What differs between stages is a `StageTask`: the training batches and their loss, how
validation is done (plain at the only exit, or routed through every exit), and the hard PPL.
Stage 1 trains the whole model on every train token; a later stage trains only its new
layers (and the shared head) on the hard tokens mined from the previous exit, unless its
ablation keys say otherwise (every token; the whole model).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Optional

import torch

from .cascade import Cascade, Evaluation, ExitPass, advance, evaluate
from .control import RunControl
from .costs import TrainingStep, training_macs
from .data import Batches
from .dist import World
from .events import BatchProgress, EpochEnded, Event
from .head import ExitStats, exit_stats, head_loss
from .mining import HardTokens
from .model import EarlyExitLM
from .names import PROPAGATED, SEQUENCE
from .settings import OptimizerSettings, StageSettings


class NumericFault(Exception):
    def __init__(self, stage: int, epoch: int, batch: int, value: float):
        super().__init__(f"loss became {value} in stage {stage}, epoch {epoch}, batch {batch}; "
                         "the best checkpoint so far is kept")
        self.where = f"stage {stage}, epoch {epoch}, batch {batch}"


# What a stage's history keeps of each EpochEnded event.
HISTORY_FIELDS = ("epoch", "train_ppl", "val_ppl", "val_acc", "hard_ppl", "shallow_ratio",
                  "improved", "seconds")


@dataclass
class StageOutcome:
    stage: int
    epochs: int
    best_epoch: int
    best_val_ppl: float
    best_val_acc: float
    best_hard_ppl: Optional[float]
    stopped_early: bool
    seconds: float
    history: list = field(default_factory=list)
    training_macs: Optional[float] = 0.0  # every step's forward and backward (costs.py)
    selection_macs: Optional[float] = 0.0  # every epoch's validation and hard PPL, forward


class StageTask:
    """What a stage trains on and how it is validated: routed through `cascade`, the exits
    so far (the stage's own is the last). A task gives `batch_tokens`, the tokens in each
    training batch, and each batch as the hidden states the head reads and their targets."""

    batch_tokens: list

    def __init__(self, model: EarlyExitLM, validation: Batches, cascade: Cascade):
        self.model, self.validation, self.cascade = model, validation, cascade
        self._first_exit: Optional[ExitPass] = None  # when its blocks are frozen
        self.world = World.current()
        self.wrapped: Optional[torch.nn.Module] = None  # DistributedDataParallel, under torchrun
        self._every_epoch: Optional[tuple] = None  # the steps' and hard PPL's MACs

    def my_rows(self, n: int) -> slice:
        """This process' rows of a batch of n (all of them in a single process)."""
        rows = self.world.share(n)
        return slice(rows.start, rows.stop)

    @property
    def hard_from_layer(self) -> int:
        """The exit below this stage's, where its hard tokens were mined."""
        return self.cascade.layers[-2]

    def num_batches(self) -> int:
        return len(self.batch_tokens)

    def tokens_in(self, index: int) -> int:
        return self.batch_tokens[index]

    def batch(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def step(self, index: int) -> Optional[TrainingStep]:
        """What training batch `index` computes, whole (every process' rows), for costs;
        None: the task does not say, and its MACs are reported unknown (None)."""
        return None

    def hard_batches(self) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
        """The mined hard tokens as batch() gives them, in chunks (stage 1 has none)."""
        return ()

    def hard_steps(self) -> list:
        """hard_batches() as TrainingSteps (their forward is what hard_ppl() computes)."""
        return []

    def epoch_compute(self, epoch: int, result: Evaluation) -> dict:
        """Epoch `epoch`'s MACs (costs.py says what is counted), as EpochEnded fields:
        training (every step, and in the first epoch what the stage computes once for
        them) and selection (validation `result`, and the hard PPL)."""
        if self._every_epoch is None:  # the same every epoch: the flags hold for the stage
            self._every_epoch = (self.epoch_macs(), self.hard_ppl_macs())
        steps, hard_ppl = self._every_epoch
        if steps is None:
            return {"training_macs": None, "selection_macs": None}
        return {"training_macs": steps + (self.setup_macs() if epoch == 1 else 0.0),
                "selection_macs": self.validation_macs(result, epoch == 1) + hard_ppl}

    def epoch_macs(self) -> Optional[float]:
        """Training MACs of one epoch: every step's forward and backward."""
        steps = [self.step(i) for i in range(self.num_batches())]
        return None if None in steps else sum(training_macs(self.model, s).total for s in steps)

    def setup_macs(self) -> float:
        """Forward MACs computed once per stage for its steps (none but in sequence context)."""
        return 0.0

    def hard_ppl_macs(self) -> float:
        return sum(training_macs(self.model, s).forward for s in self.hard_steps())

    def validation_macs(self, result: Evaluation, first_epoch: bool) -> float:
        """Forward MACs of validate(): routed computing everything; a frozen first exit's
        blocks (and, with a frozen head, its head) run once per stage, counted in its
        first epoch."""
        costs = self.cascade.costs(self.model, self.validation.x.shape[-1])
        known = self._first_exit is not None
        stats_known = known and self._first_exit.stats is not None
        macs = costs.routed(result.exit_counts, first_known=known, first_stats_known=stats_known)
        if known and first_epoch:
            macs += result.tokens * self.cascade.layers[0] * costs.block(SEQUENCE)
            macs += result.tokens * costs.head if stats_known else 0.0
        return macs

    def loss(self, index: int) -> torch.Tensor:
        """Mean cross-entropy over the batch; under torchrun over this rank's rows, weighted
        so that DistributedDataParallel's average over ranks is the whole batch's mean."""
        hidden, targets = self.batch(index)
        weight = self.model.head.weight
        if not self.world.parallel:
            return head_loss(hidden, weight, targets)
        if targets.numel() == 0:  # no rows here: zero gradients, so every rank joins in
            return hidden.sum() * 0.0 + weight.sum() * 0.0
        share = targets.numel() * self.world.size / self.tokens_in(index)
        return head_loss(hidden, weight, targets) * share

    def validate(self, check: Callable[[], None]) -> Evaluation:
        if self.cascade.last and self._first_exit is None and self._first_exit_frozen():
            self._first_exit = self._frozen_first_exit(check)
        return evaluate(self.model, self.validation, self.cascade, check, self._first_exit)

    def _first_exit_frozen(self) -> bool:
        below = [*self.model.embedding.parameters(),
                 *self.model.layers[:self.cascade.layers[0]].parameters()]
        return not any(p.requires_grad for p in below)

    def _first_exit_stats_frozen(self) -> bool:
        """The first exit's statistics never change in this stage: its blocks and the head
        are frozen, and the exit decides by max-softmax (which reads them all)."""
        return not self.model.head.weight.requires_grad and self.cascade.classifiers is None

    @torch.no_grad()
    def _frozen_first_exit(self, check: Callable[[], None]) -> ExitPass:
        """The validation split at the frozen first exit, computed once per stage: its
        hidden states, and with a frozen head its statistics (this rank's batches; every
        epoch routes only those, batch by batch exactly as evaluate() would)."""
        model, batches, first_layer = self.model, self.validation, self.cascade.layers[0]
        hidden = torch.cat([model.hidden(x, stop=first_layer).reshape(x.numel(), -1)
                            for x in batches.x])
        if not self._first_exit_stats_frozen():
            return ExitPass(hidden)
        n, total = batches.y[0].numel(), hidden.shape[0]
        stats = ExitStats(torch.empty(total, device=hidden.device),
                          torch.empty(total, device=hidden.device),
                          torch.zeros(total, dtype=torch.bool, device=hidden.device))
        for i in self.world.each_of_mine(len(batches), check):
            rows = slice(i * n, (i + 1) * n)
            s = exit_stats(hidden[rows], model.head.weight, batches.y[i])
            stats.nll[rows], stats.confidence[rows], stats.correct[rows] = \
                s.nll, s.confidence, s.correct
        return ExitPass(hidden, stats)

    @torch.no_grad()
    def hard_ppl(self) -> Optional[float]:
        """PPL on the mined hard tokens, through the layers above the exit they were mined at
        as they are trained, then the head."""
        nll_sum, count = 0.0, 0
        for hidden, targets in self.hard_batches():
            s = exit_stats(hidden, self.model.head.weight, targets)
            nll_sum += float(s.nll.double().sum())
            count += len(s)
        nll_sum, count = self.world.total(nll_sum), int(self.world.total(count))
        return math.exp(nll_sum / count) if count else None


class SequenceTask(StageTask):
    """Stage 1: the whole model on every train sequence, in the same order every epoch."""

    def __init__(self, model, train: Batches, validation, cascade):
        super().__init__(model, validation, cascade)
        self.train, self.batch_tokens = train, [y.numel() for y in train.y]

    def batch(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        rows = self.my_rows(self.train.x.shape[1])
        h = self.model.hidden(self.train.x[index][rows])
        return h.reshape(-1, h.shape[-1]), self.train.y[index][rows].reshape(-1)

    def step(self, index: int) -> TrainingStep:
        x = self.train.x[index]
        return TrainingStep(x.numel(), x.shape[-1], 0, self.tokens_in(index))


class HardTokenTask(StageTask):
    """A later stage in the spec's token context: each hard token's stored hidden state goes
    through the new layers as a sequence of length 1. Shuffled once, then fixed batches.
    `train`: the tokens it trains on when they are not the hard ones (stages.N.tokens =
    "all"); `order` orders those. The hard PPL is always the hard tokens'."""

    def __init__(self, model, hard: HardTokens, order: torch.Tensor, batch_size: int,
                 validation, cascade, train: Optional[HardTokens] = None):
        super().__init__(model, validation, cascade)
        self.hard, self.train = hard, hard if train is None else train
        self.order = [order[i:i + batch_size] for i in range(0, len(self.train), batch_size)]
        self.batch_tokens = [rows.numel() for rows in self.order]

    def upper(self, tokens: HardTokens, rows) -> tuple[torch.Tensor, torch.Tensor]:
        h = tokens.hidden[rows][:, None, :]
        out = self.model.run_layers(h, self.hard_from_layer, self.model.num_layers)[:, 0, :]
        return out, tokens.targets[rows]

    def batch(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        rows = self.order[index]
        return self.upper(self.train, rows[self.my_rows(len(rows))])

    def step(self, index: int) -> TrainingStep:
        n = self.tokens_in(index)
        return TrainingStep(n, 1, self.hard_from_layer, n)

    def hard_batches(self) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
        starts = range(0, len(self.hard), 4096)
        return (self.upper(self.hard, slice(i, i + 4096))
                for i in starts[self.my_rows(len(starts))])

    def hard_steps(self) -> list:
        return [TrainingStep(len(self.hard), 1, self.hard_from_layer, len(self.hard))]


class MaskedSequenceTask(StageTask):
    """A later stage in the sequence context: the new layers see whole sequences of the
    mining split, the loss counts only the hard tokens. The other tokens left at an earlier
    exit: they keep their exit state in the new layers (state propagation), which is exactly
    how the real early exit runs them at inference, so training and inference agree.
    `lower` (batches, B, T, dim): the frozen layers' output, computed once, or None when the
    layers below train too (stages.N.trainable = "all"): then it runs from the token ids at
    every step. `remaining` (batches, B, T): the tokens trained on, those the cascade sends
    on to the new layers; `hard`: the mined ones, for the hard PPL (default: `remaining`)."""

    def __init__(self, model, lower: Optional[torch.Tensor], remaining: torch.Tensor,
                 source: Batches, validation, cascade, hard: Optional[torch.Tensor] = None):
        super().__init__(model, validation, cascade)
        self.context_tokens = source.x.numel()  # the whole mining split's
        keep = remaining.flatten(1).any(1).nonzero().squeeze(1)  # batches with a token to train
        self.lower = None if lower is None else lower[keep]
        self.x, self.y, self.remaining = source.x[keep], source.y[keep], remaining[keep]
        self.hard = self.remaining if hard is None else hard[keep]
        self.batch_tokens = self.remaining.flatten(1).sum(1).tolist()

    def upper(self, index: int, rows: slice) -> torch.Tensor:
        """The batch's rows after the new layers, the tokens not remaining propagated."""
        lower = self.model.hidden(self.x[index][rows], stop=self.hard_from_layer) \
            if self.lower is None else self.lower[index][rows]
        return advance(self.model, lower, self.hard_from_layer, self.model.num_layers,
                       PROPAGATED, self.remaining[index][rows])

    def batch(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        rows = self.my_rows(self.x.shape[1])
        remaining = self.remaining[index][rows]
        return self.upper(index, rows)[remaining], self.y[index][rows][remaining]

    def step(self, index: int, loss_tokens: Optional[int] = None) -> TrainingStep:
        """Every position runs (from the token ids when the lower layers train too); the
        trained ones get a loss."""
        shape, start = self.remaining[index].shape, 0 if self.lower is None else \
            self.hard_from_layer
        return TrainingStep(shape.numel(), shape[-1], start,
                            self.tokens_in(index) if loss_tokens is None else loss_tokens)

    def setup_macs(self) -> float:
        """The context: the frozen layers' states of the mining split, once per stage, by
        the exit pass mining runs (steps.Pipeline._task); none when those layers train."""
        if self.lower is None:
            return 0.0
        below = self.cascade.first(self.cascade.last)
        costs = below.costs(self.model, self.x.shape[-1])
        return self.context_tokens * costs.compute_everything()

    def hard_batches(self) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
        for index in range(self.num_batches()):
            rows = self.my_rows(self.x.shape[1])
            hard = self.hard[index][rows]
            yield self.upper(index, rows)[hard], self.y[index][rows][hard]

    def hard_steps(self) -> list:
        return [self.step(i, int(self.hard[i].sum())) for i in range(self.num_batches())]


def make_optimizer(model: EarlyExitLM, lr: float, opt: OptimizerSettings):
    """AdamW with torch's defaults. The fused kernel does the same arithmetic in one pass
    over the 4.5 M-parameter head instead of several (≈8× faster per step on the CPU)."""
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW(params, lr=lr, weight_decay=opt.weight_decay, fused=True)


def snapshot(model: EarlyExitLM) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@dataclass
class EarlyStopping:
    """Early stopping on validation PPL: strictly lower is better; stop after `patience`
    epochs in a row without improvement. Plain data, so a resumed run can restore it."""

    patience: int
    epoch: int = 0  # epochs finished
    best_ppl: float = math.inf
    best_acc: float = 0.0
    best_hard: Optional[float] = None  # the best epoch's hard PPL (progress.pt keeps the name)
    best_epoch: int = 0
    counter: int = 0
    seconds: float = 0.0
    history: list = field(default_factory=list)
    # the stage's so far (in progress.pt, so resumes keep them); None: not counted before
    training_macs: Optional[float] = 0.0
    selection_macs: Optional[float] = 0.0

    @classmethod
    def restored(cls, early: dict) -> "EarlyStopping":
        """From progress.pt; one written before MACs were counted leaves the stage's unknown."""
        return cls(**{"training_macs": None, "selection_macs": None, **early})

    def update(self, epoch: int, ppl: float, acc: float, hard_ppl: Optional[float]) -> bool:
        self.epoch = epoch
        if ppl < self.best_ppl:
            self.best_ppl, self.best_acc, self.best_hard = ppl, acc, hard_ppl
            self.best_epoch, self.counter = epoch, 0
            return True
        self.counter += 1
        return False

    def count(self, macs: dict) -> dict:
        """Adds an epoch's {"training_macs", "selection_macs"} to the stage's; returns them."""
        if self.training_macs is None or macs["training_macs"] is None:
            self.training_macs = self.selection_macs = None  # unknown, not a part
        else:
            self.training_macs += macs["training_macs"]
            self.selection_macs += macs["selection_macs"]
        return macs

    @property
    def should_stop(self) -> bool:
        return self.counter >= self.patience


def run_stage(stage: int, task: StageTask, cfg: StageSettings, opt: OptimizerSettings,
              control: RunControl, emit: Callable[[Event], None],
              progress_events_per_epoch: int = 100,
              on_improved: Optional[Callable[[int, dict], None]] = None,
              on_epoch_end: Optional[Callable[[dict], None]] = None,
              resume: Optional[dict] = None) -> StageOutcome:
    """Trains with early stopping on validation PPL (strictly lower is better), restores the
    best weights, and returns the outcome. `on_improved(epoch, state)` runs at every new
    best, so the best checkpoint is on disk whatever happens next; `on_epoch_end(progress)`
    gets everything needed to resume after this epoch; `resume` is such a progress dict
    (plus "best_state") to continue from."""
    model, resume = task.model, resume or {}
    optimizer = make_optimizer(model, cfg.lr, opt)
    stopping = EarlyStopping.restored(resume["early"]) if resume else EarlyStopping(cfg.patience)
    if resume.get("optimizer"):
        optimizer.load_state_dict(resume["optimizer"])
    best_state = resume.get("best_state") or snapshot(model)
    epoch = stopping.epoch
    while epoch < cfg.max_epochs and not stopping.should_stop:
        epoch += 1
        train_ppl, seconds = train_epoch(stage, epoch, task, optimizer, opt, control, emit,
                                         progress_events_per_epoch)
        model.eval()
        started, where = time.perf_counter(), f"stage {stage}, epoch {epoch}, validation"
        result, hard_ppl = task.validate(lambda: control.checkpoint(where)), task.hard_ppl()
        seconds += time.perf_counter() - started
        improved = stopping.update(epoch, result.ppl, result.accuracy, hard_ppl)
        stopping.seconds = round(stopping.seconds + seconds, 3)
        macs = stopping.count(task.epoch_compute(epoch, result))
        if improved:
            best_state = snapshot(model)
            if on_improved:
                on_improved(epoch, best_state)
        ended = EpochEnded(
            stage=stage, epoch=epoch, train_ppl=train_ppl, val_ppl=result.ppl,
            val_acc=result.accuracy, improved=improved, patience_counter=stopping.counter,
            patience=cfg.patience, best_epoch=stopping.best_epoch,
            best_val_ppl=stopping.best_ppl, seconds=round(seconds, 3), hard_ppl=hard_ppl,
            shallow_ratio=result.exit_ratios[0] if task.cascade.last else None, **macs)
        stopping.history.append({k: getattr(ended, k) for k in HISTORY_FIELDS})
        emit(ended)
        # After the event: a kill in between repeats this epoch rather than losing it.
        if on_epoch_end:
            on_epoch_end({"epoch": epoch, "model": model.state_dict(),
                          "optimizer": optimizer.state_dict(), "early": dict(vars(stopping))})
    model.load_state_dict(best_state)
    return StageOutcome(stage, epoch, stopping.best_epoch, stopping.best_ppl,
                        stopping.best_acc, stopping.best_hard, stopping.should_stop,
                        stopping.seconds, list(stopping.history), stopping.training_macs,
                        stopping.selection_macs)


def clip_gradients(params: list, max_norm: float) -> None:
    """clip_grad_norm_, bit for bit, without its multiply by exactly 1 when the norm is
    within the limit (torch always multiplies, to spare a GPU a sync): one pass less over
    the 4.5 M-parameter head's gradient in every step that is not clipped."""
    total = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
    if bool(max_norm / (total + 1e-6) < 1.0):
        torch.nn.utils.clip_grads_with_norm_(params, max_norm, total)


class _TaskLoss(torch.nn.Module):
    """A task's loss as a module, so that DistributedDataParallel can wrap it."""

    def __init__(self, task: StageTask):
        super().__init__()
        self.model, self.task = task.model, task

    def forward(self, index: int) -> torch.Tensor:
        return self.task.loss(index)


def data_parallel(task: StageTask) -> Callable[[int], torch.Tensor]:
    """The task's loss; under torchrun through DistributedDataParallel, which averages the
    gradients over the ranks during backward (wrapped once per stage: wrapping broadcasts
    every parameter)."""
    if not task.world.parallel:
        return task.loss
    if task.wrapped is None:
        from torch.nn.parallel import DistributedDataParallel

        task.wrapped = DistributedDataParallel(_TaskLoss(task))
    return task.wrapped


def train_epoch(stage: int, epoch: int, task: StageTask, optimizer, opt: OptimizerSettings,
                control: RunControl, emit: Callable[[Event], None],
                progress_events_per_epoch: int) -> tuple[float, float]:
    """One pass over the task's batches; returns the train PPL and the seconds it took."""
    model, batches, world = task.model, task.num_batches(), task.world
    params = [p for p in model.parameters() if p.requires_grad]
    every = max(1, math.ceil(batches / progress_events_per_epoch))
    model.train()
    loss_of = data_parallel(task)
    seconds, loss_sum, tokens = 0.0, 0.0, 0
    for b in range(batches):
        control.checkpoint(f"stage {stage}, epoch {epoch}, batch {b + 1}/{batches}")
        started = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss = loss_of(b)
        value = world.total(loss.item()) / world.size  # the whole batch's mean
        if not math.isfinite(value):
            raise NumericFault(stage, epoch, b + 1, value)
        loss.backward()
        clip_gradients(params, opt.grad_clip)
        optimizer.step()
        seconds += time.perf_counter() - started
        loss_sum += value
        tokens += task.tokens_in(b)
        if (b + 1) % every == 0 or b + 1 == batches:
            rate = tokens / seconds if seconds > 0 else 0.0
            left = sum(task.tokens_in(i) for i in range(b + 1, batches))
            emit(BatchProgress(stage=stage, epoch=epoch, batch=b + 1, batches=batches,
                               loss=loss_sum / (b + 1), tokens_per_s=round(rate, 1),
                               eta_s=round(left / rate, 1) if rate > 0 else 0.0))
    return math.exp(loss_sum / batches), seconds
