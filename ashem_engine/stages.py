"""One training loop for every stage: epochs, validation, early stopping, best weights.

What differs between stages is a `StageTask`: the training batches and their loss, how
validation is done (plain at the only exit, or routed through every exit), and the hard PPL."""
from __future__ import annotations

import itertools
import math
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, Optional

import torch

from .cascade import Cascade, Evaluation, ExitPass, advance, evaluate
from .control import RunControl
from .costs import TrainingStep, training_macs
from .data import Batches
from .dist import World
from .events import BatchProgress, EpochEnded, Event
from .head import ExitStats, exit_stats, head_loss
from .lr_schedule import LrSchedule
from .joint import joint_loss
from .mining import HardTokens
from .model import EarlyExitLM
from .names import PROPAGATED, SEQUENCE
from .settings import OptimizerSettings, StageSettings
from .summary import EPOCH


class NumericFault(Exception):
    """The training loss is not finite, found at `batch`; `since`: the first batch whose loss
    was not yet checked then (the losses are read every few batches, train_epoch)."""

    def __init__(self, stage: int, epoch: int, batch: int, value: float,
                 since: Optional[int] = None):
        unchecked = f"first in one of batches {since}-{batch}; " \
            if since is not None and since < batch else ""
        super().__init__(f"loss became {value} in stage {stage}, epoch {epoch}, batch {batch}; "
                         f"{unchecked}the best checkpoint so far is kept")
        self.where = f"stage {stage}, epoch {epoch}, batch {batch}"


class CompileFailed(Exception):
    """torch.compile does not work here (no C compiler, an unsupported Python, ...)."""

    def __init__(self, error: Exception):
        first = (str(error).strip().splitlines() or [""])[0] or type(error).__name__
        super().__init__(f"run.compile = true, but torch.compile failed on this machine "
                         f"({type(error).__name__}: {first}); set run.compile = false")


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
    stopped_by: str = "max_epochs"  # or "patience", or "budget" (run.training_macs_budget)


class StageTask:
    """What a stage trains on and how it is validated (routed through `cascade`, the stage's own
    exit last): `batch_tokens` per training batch, and each batch, whole or a block of its rows
    (a micro-batch; `rows_in`: how many it has), as the head's hidden states and targets."""

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

    def epoch_tokens(self) -> int:
        """The target tokens an epoch's steps are given, every process' rows."""
        return sum(self.tokens_in(i) for i in range(self.num_batches()))

    def rows_in(self, index: int) -> int:
        raise NotImplementedError

    def batch(self, index: int, rows: Optional[slice] = None
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """Batch `index`'s `rows` (default: this process' rows) for the head: the states as
        model.to_head gives them (a pre-norm model's final norm applied), and the targets."""
        raise NotImplementedError

    def rows_of(self, index: int, rows: Optional[slice]) -> slice:
        return self.my_rows(self.rows_in(index)) if rows is None else rows

    def micro_batches(self, index: int, size: int) -> list:
        """This process' rows of batch `index` in blocks of `size` (slices); [None], the
        whole share in one piece, when size is 0 or the share is no larger."""
        if size == 0:
            return [None]
        mine = self.my_rows(self.rows_in(index))
        if mine.stop - mine.start <= size:
            return [None]
        return [slice(start, min(start + size, mine.stop))
                for start in range(mine.start, mine.stop, size)]

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

    def held_bytes(self) -> int:
        """What this process holds for the stage's steps (hidden states, token ids; no model)."""
        return 0

    def epoch_compute(self, epoch: int, result: Evaluation, steps: Optional[int] = None) -> dict:
        """Epoch `epoch`'s MACs as EpochEnded fields: training (every step; in the first epoch
        also what the stage computes once for them) and selection (validation and hard PPL).
        `steps`: the steps taken, where the run's training-MACs budget cut the epoch short:
        theirs alone count, and the stage's setup only once it has taken a step."""
        if self._every_epoch is None:  # the same every epoch: the flags hold for the stage
            self._every_epoch = (self.epoch_macs(), self.hard_ppl_macs())
        every, hard_ppl = self._every_epoch
        if every is None:
            return {"training_macs": None, "selection_macs": None}
        taken = every if steps is None or steps == self.num_batches() else \
            sum(self.step_macs()[:steps])
        setup = self.setup_macs() if epoch == 1 and steps != 0 else 0.0
        return {"training_macs": taken + setup,
                "selection_macs": self.validation_macs(result, epoch == 1) + hard_ppl}

    def step_macs(self) -> Optional[list]:
        """Each training step's MACs, forward and backward; None where the task does not say."""
        steps = [self.step(i) for i in range(self.num_batches())]
        return None if None in steps else [training_macs(self.model, s).total for s in steps]

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
        """Forward MACs of validate(): routed computing everything; a frozen first exit's blocks
        (and, with a frozen head, its head) run once per stage, counted in its first epoch."""
        costs = self.cascade.costs(self.model, self.validation.x.shape[-1])
        known = self._first_exit is not None
        stats_known = known and self._first_exit.stats is not None
        macs = costs.routed(result.exit_counts, first_known=known, first_stats_known=stats_known)
        if known and first_epoch:
            macs += result.tokens * self.cascade.layers[0] * costs.block(SEQUENCE)
            macs += result.tokens * costs.head if stats_known else 0.0
        return macs

    def loss(self, index: int, rows: Optional[slice] = None) -> torch.Tensor:
        """Mean cross-entropy over the batch; over a part of it (this rank's rows, a micro-batch)
        weighted by the part's share of the batch's tokens, so that the parts' sum, and DDP's
        average over the ranks of each rank's sum, is the whole batch's mean, gradients too."""
        hidden, targets = self.batch(index, rows)
        weight = self.model.head.weight
        if rows is None and not self.world.parallel:
            return head_loss(hidden, weight, targets)
        if targets.numel() == 0:  # no tokens here: zero gradients, so every rank joins in
            return hidden.sum() * 0.0 + weight.sum() * 0.0
        share = targets.numel() * self.world.size / self.tokens_in(index)
        return head_loss(hidden, weight, targets) * share

    def epoch_fields(self, result: Evaluation) -> dict:
        """EpochEnded fields of this task's own, from the epoch's validation (none here)."""
        return {}

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
        are frozen, and its signal reads the head (as max-softmax does)."""
        return not self.model.head.weight.requires_grad and self.cascade.exit_signal.reads_head

    @torch.no_grad()
    def _frozen_first_exit(self, check: Callable[[], None]) -> ExitPass:
        """The validation split at the frozen first exit, once per stage: its hidden states and,
        with a frozen head, statistics (this rank's batches, batch by batch as evaluate() would)."""
        model, batches, first_layer = self.model, self.validation, self.cascade.layers[0]
        share = self.world.share(len(batches))
        hidden = torch.cat([model.hidden(batches.batch(i)[0], stop=first_layer).flatten(0, 1)
                            for i in share])
        if not self._first_exit_stats_frozen():
            return ExitPass(hidden)
        n, total = batches.y[0].numel(), hidden.shape[0]
        stats = ExitStats(torch.empty(total, device=hidden.device),
                          torch.empty(total, device=hidden.device),
                          torch.zeros(total, dtype=torch.bool, device=hidden.device))
        for i in self.world.each_of_mine(len(batches), check):
            rows = slice((i - share.start) * n, (i - share.start + 1) * n)
            s = exit_stats(model.to_head(hidden[rows]), model.head.weight, batches.batch(i)[1])
            stats.nll[rows], stats.confidence[rows], stats.correct[rows] = \
                s.nll, s.confidence, s.correct
        return ExitPass(hidden, stats)

    @torch.no_grad()
    def hard_ppl(self) -> Optional[float]:
        """PPL on the mined hard tokens, through the layers above their exit, then the head."""
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

    def rows_in(self, index: int) -> int:
        return self.train.x.shape[1]

    def batch(self, index: int, rows: Optional[slice] = None
              ) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.train.batch(index, self.rows_of(index, rows))
        h = self.model.hidden(x)
        return self.model.to_head(h.reshape(-1, h.shape[-1])), y.reshape(-1)

    def step(self, index: int) -> TrainingStep:
        x = self.train.x[index]
        return TrainingStep(x.numel(), x.shape[-1], 0, self.tokens_in(index))


class HardTokenTask(StageTask):
    """A later stage in the spec's token context: each hard token's stored hidden state goes through
    the new layers as a sequence of length 1. Shuffled once, then fixed batches. A row is a token
    here, as in data.batch_size (a micro-batch of m rows: m tokens). `train`: the tokens it trains
    on when they are not the hard ones (stages.N.tokens = "all"); `order` orders those. The hard PPL
    is always the hard tokens'. Under torchrun a process holds the states of the tokens it mined; it
    trains on its rows of every batch, whose states it gets from the others once (`rows_here`)."""

    def __init__(self, model, hard: HardTokens, order: torch.Tensor, batch_size: int,
                 validation, cascade, train: Optional[HardTokens] = None):
        super().__init__(model, validation, cascade)
        self.hard, self.train, self.hard_total = hard, hard if train is None else train, len(hard)
        order = order.to(self.train.targets.device)  # no host index on a device's states
        self.order = [order[i:i + batch_size] for i in range(0, len(self.train), batch_size)]
        self.batch_tokens = [rows.numel() for rows in self.order]
        self.rows_here: Optional[HardTokens] = None
        if self.world.parallel:
            self._take_my_rows(hard_is_train=train is None)

    def _take_my_rows(self, hard_is_train: bool) -> None:
        mine = [rows[self.my_rows(len(rows))] for rows in self.order]
        self.starts = [0, *itertools.accumulate(len(rows) for rows in mine)]
        wanted = torch.cat(mine).to(self.train.targets.device)
        hidden = self.world.exchange(self.train.hidden, self.train.here, wanted)
        self.rows_here = HardTokens(hidden, self.train.targets[wanted],
                                    self.train.confidences[wanted], self.train.positions[wanted])
        if hard_is_train:  # every hard token is some process' row, once: the hard PPL's
            self.hard = self.train = self.rows_here

    def upper(self, tokens: HardTokens, rows) -> tuple[torch.Tensor, torch.Tensor]:
        h = tokens.hidden[rows][:, None, :]
        out = self.model.run_layers(h, self.hard_from_layer, self.model.num_layers)[:, 0, :]
        return self.model.to_head(out), tokens.targets[rows]

    def rows_in(self, index: int) -> int:
        return len(self.order[index])

    def batch(self, index: int, rows: Optional[slice] = None
              ) -> tuple[torch.Tensor, torch.Tensor]:
        rows = self.rows_of(index, rows)
        if self.rows_here is None:
            return self.upper(self.train, self.order[index][rows])
        first = self.starts[index] - self.my_rows(self.rows_in(index)).start
        return self.upper(self.rows_here, slice(first + rows.start, first + rows.stop))

    def step(self, index: int) -> TrainingStep:
        n = self.tokens_in(index)
        return TrainingStep(n, 1, self.hard_from_layer, n)

    def hard_batches(self) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
        """This process' hard tokens (all in one process), in chunks."""
        hard, here = self.hard, self.hard.here
        for i in range(0, len(here), 4096):
            h = hard.hidden[i:i + 4096][:, None, :]
            out = self.model.run_layers(h, self.hard_from_layer, self.model.num_layers)
            targets = hard.targets[here.start + i: here.start + i + 4096]
            yield self.model.to_head(out[:, 0, :]), targets

    def hard_steps(self) -> list:
        n = self.hard_total
        return [TrainingStep(n, 1, self.hard_from_layer, n)]

    def held_bytes(self) -> int:
        held = {id(t.hidden): t.hidden for t in (self.hard, self.train, self.rows_here) if t}
        return sum(h.numel() * h.element_size() for h in held.values())


class MaskedSequenceTask(StageTask):
    """A later stage in the sequence context: the new layers see whole sequences of the mining
    split, the loss counts only the hard tokens. Tokens that left at an earlier exit keep their
    exit state in the new layers (state propagation), as the real early exit runs them.
    `lower` (batches, B, T, dim): the frozen layers' output, computed once; None when they train
    too (stages.N.trainable = "all"). `remaining` (batches, B, T): the tokens trained on, those
    the cascade sends on; `hard`: the mined ones, for the hard PPL (default: `remaining`)."""

    def __init__(self, model, lower: Optional[torch.Tensor], remaining: torch.Tensor,
                 source: Batches, validation, cascade, hard: Optional[torch.Tensor] = None):
        super().__init__(model, validation, cascade)
        self.context_tokens = source.x.numel()  # the whole mining split's
        keep = remaining.flatten(1).any(1).nonzero().squeeze(1)  # batches with a token to train
        self.mine = self.my_rows(source.x.shape[1])  # the rows this process holds
        self.lower = None if lower is None else lower[keep]
        self.x, self.y = (t[:, self.mine][keep.cpu()].to(remaining.device)
                          for t in (source.x, source.y))
        self.remaining = remaining[keep]
        self.hard = self.remaining if hard is None else hard[keep]
        per_row = self.remaining.sum(-1)  # (batches, B)
        self.batch_tokens = per_row.sum(1).tolist()
        # The trained positions of each batch, row-major, and where each row's end among
        # them: a block of rows' tokens is found without a wait on the device.
        self.positions = self.remaining.flatten(1).nonzero()[:, 1].split(self.batch_tokens)
        self.row_ends = per_row.cumsum(1).tolist()

    def upper(self, index: int, rows: slice) -> torch.Tensor:
        """The batch's rows after the new layers, the tokens not remaining propagated."""
        held = self.held(rows)
        lower = self.model.hidden(self.x[index][held], stop=self.hard_from_layer) \
            if self.lower is None else self.lower[index][held]
        return advance(self.model, lower, self.hard_from_layer, self.model.num_layers,
                       PROPAGATED, self.remaining[index][rows])

    def held(self, rows: slice) -> slice:
        """Where a batch's `rows` (of this process' own) are in what it holds."""
        return slice(rows.start - self.mine.start, rows.stop - self.mine.start)

    def rows_in(self, index: int) -> int:
        return self.remaining.shape[1]

    def trained(self, index: int, rows: slice) -> torch.Tensor:
        """The trained tokens' flat positions within batch `index`'s `rows`, in order."""
        ends = self.row_ends[index]
        first = ends[rows.start - 1] if rows.start > 0 else 0
        last = ends[rows.stop - 1] if rows.stop > 0 else 0
        return self.positions[index][first:last] - rows.start * self.x.shape[-1]

    def batch(self, index: int, rows: Optional[slice] = None
              ) -> tuple[torch.Tensor, torch.Tensor]:
        rows = self.rows_of(index, rows)
        trained, upper = self.trained(index, rows), self.upper(index, rows)
        return (self.model.to_head(upper.flatten(0, 1)[trained]),
                self.y[index][self.held(rows)].flatten()[trained])

    def step(self, index: int, loss_tokens: Optional[int] = None) -> TrainingStep:
        """Every position runs (from token ids if lower layers train); the trained get a loss."""
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
            hard = self.hard[index][self.mine]
            yield self.model.to_head(self.upper(index, self.mine)[hard]), self.y[index][hard]

    def hard_steps(self) -> list:
        return [self.step(i, int(self.hard[i].sum())) for i in range(self.num_batches())]

    def held_bytes(self) -> int:
        held = [self.x, self.y] + ([] if self.lower is None else [self.lower])
        return sum(t.numel() * t.element_size() for t in held)


@dataclass
class JointValidation:
    """A joint model's validation split at every exit, not routed: each exit's mean NLL and
    accuracy; as one figure (what early stopping watches) their means weighted as the loss's."""
    tokens: int
    exit_nll: list
    exit_accuracy: list
    weights: list

    @property
    def ppl(self) -> float:
        return math.exp(sum(w * nll for w, nll in zip(self.weights, self.exit_nll)))

    @property
    def accuracy(self) -> float:
        return sum(w * a for w, a in zip(self.weights, self.exit_accuracy))

    @property
    def exit_ppls(self) -> list:
        return [math.exp(nll) for nll in self.exit_nll]


class JointTask(SequenceTask):
    """The joint early-exit baseline (joint.py): the whole model on every train sequence, as
    stage 1, its loss the `weights`' sum of the head's loss at each of `exits` (their layers,
    the model's last among them), from one forward. Validated at every exit (no thresholds
    exist yet), each EpochEnded given the exits' PPLs (epoch_fields)."""

    def __init__(self, model, train: Batches, validation: Batches, exits, weights):
        super().__init__(model, train, validation, Cascade.of([exits[-1]]))
        self.exits, self.weights = list(exits), list(weights)

    def exit_states(self, x: torch.Tensor) -> list:
        """Token ids (B, T) -> the states the head reads at every exit, (B·T, dim) each."""
        h, start, states = self.model.embedding(x), 0, []
        for layer in self.exits:
            h, start = self.model.run_layers(h, start, layer), layer
            states.append(self.model.to_head(h.reshape(-1, h.shape[-1])))
        return states

    def loss(self, index: int, rows: Optional[slice] = None) -> torch.Tensor:
        """The weighted sum of the exits' mean losses, a part's weighted as StageTask.loss's."""
        x, y = self.train.batch(index, self.rows_of(index, rows))
        states, weight = self.exit_states(x), self.model.head.weight
        if rows is None and not self.world.parallel:
            return joint_loss(states, weight, y.reshape(-1), self.weights)
        if y.numel() == 0:  # no tokens here: zero gradients, so every rank joins in
            return sum(h.sum() for h in states) * 0.0 + weight.sum() * 0.0
        share = y.numel() * self.world.size / self.tokens_in(index)
        return joint_loss(states, weight, y.reshape(-1), self.weights) * share

    def step(self, index: int) -> TrainingStep:
        """Every position through every block; every token through the head at every exit."""
        x = self.train.x[index]
        return TrainingStep(x.numel(), x.shape[-1], 0, self.tokens_in(index) * len(self.exits))

    @torch.no_grad()
    def validate(self, check: Callable[[], None]) -> JointValidation:
        batches, weight = self.validation, self.model.head.weight
        sums = torch.zeros(2, len(self.exits), dtype=torch.float64, device=weight.device)
        for i in self.world.each_of_mine(len(batches), check):
            x, y = batches.batch(i)
            for e, h in enumerate(self.exit_states(x)):
                s = exit_stats(h, weight, y.reshape(-1))
                sums[0, e] += s.nll.double().sum()
                sums[1, e] += s.correct.sum()
        nll, correct = (self.world.sum(sums) / batches.tokens).tolist()
        return JointValidation(batches.tokens, nll, correct, self.weights)

    def validation_macs(self, result: JointValidation, first_epoch: bool) -> float:
        """Forward MACs of validate(): every token through every block and every exit's head."""
        every_exit = Cascade.of(self.exits, [0.0] * (len(self.exits) - 1))
        costs = every_exit.costs(self.model, self.validation.x.shape[-1])
        return result.tokens * costs.compute_everything()

    def epoch_fields(self, result: JointValidation) -> dict:
        return {"exit_val_ppls": result.exit_ppls}


def make_optimizer(model: EarlyExitLM, lr: float, opt: OptimizerSettings):
    """AdamW with torch's defaults, fused: the same arithmetic in one pass over memory."""
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

    def outcome(self, stage: int, epochs: int, budget_spent: bool = False) -> StageOutcome:
        """The stage's outcome as it stands after `epochs` epochs (`budget_spent`: the run's
        training-MACs budget ended it)."""
        stopped_by = "budget" if budget_spent else "patience" if self.should_stop else \
            "max_epochs"
        return StageOutcome(stage, epochs, self.best_epoch, self.best_ppl, self.best_acc,
                            self.best_hard, self.should_stop, self.seconds, list(self.history),
                            self.training_macs, self.selection_macs, stopped_by)


@dataclass
class RunTotals:
    """What the run has trained so far, over every stage and attempt: EpochEnded's
    tokens_trained and run_training_macs. progress.pt keeps it, so a resumed run counts on
    from where it stopped; None: not known (resumed from a progress.pt written before it)."""

    tokens_trained: Optional[int] = 0
    training_macs: Optional[float] = 0.0
    # the run's seconds over every attempt, for EpochEnded.run_seconds (not kept: a clock)
    clock: Optional[Callable[[], float]] = field(default=None, repr=False, compare=False)

    def add(self, tokens: int, macs: Optional[float]) -> dict:
        """Adds an epoch's target tokens and training MACs; the EpochEnded fields after it."""
        if self.tokens_trained is not None:
            self.tokens_trained += tokens
        if self.training_macs is not None:
            self.training_macs = None if macs is None else self.training_macs + macs
        return {"tokens_trained": self.tokens_trained, "run_training_macs": self.training_macs,
                "run_seconds": None if self.clock is None else round(self.clock(), 3)}

    def kept(self) -> dict:
        """What progress.pt keeps of it (ResumePoint.totals)."""
        return {"tokens_trained": self.tokens_trained, "training_macs": self.training_macs}


@dataclass
class TrainingBudget:
    """run.training_macs_budget (`limit`; 0: none) as a stage's steps meet it: a step is taken
    only while the run's training MACs so far are below the limit, the stage's setup MACs
    (StageTask.setup_macs) counted with its first step. Everything follows from the run's
    totals after its last finished epoch, so a resumed run stops where one straight through
    does. `taken`: the steps of the epoch in progress so far (every one without a limit)."""

    limit: float
    totals: RunTotals
    task: StageTask
    epoch: int = 0
    taken: int = 0
    spent: float = 0.0  # the epoch's training MACs so far
    step_macs: Optional[list] = field(default=None, repr=False)

    def __post_init__(self):
        if self.limit > 0:
            self.step_macs = self.task.step_macs()
            if self.step_macs is None or self.totals.training_macs is None:
                raise ValueError("run.training_macs_budget needs the run's training MACs, which "
                                 "are not known here (a task without step MACs, or a resume "
                                 "from a progress.pt written before they were counted)")

    def spent_before(self) -> bool:
        """Whether the run's finished epochs reached the limit."""
        return self.limit > 0 and self.totals.training_macs >= self.limit

    def ends_stage(self, epochs_done: int) -> bool:
        """No further epoch: the limit is reached (a stage that has run none still runs one,
        of no step, to validate the model it starts with)."""
        return epochs_done > 0 and self.spent_before()

    def start(self, epoch: int) -> Callable[[int], bool]:
        """Epoch `epoch` begins; its `allows`."""
        self.epoch, self.taken, self.spent = epoch, 0, 0.0
        return self.allows

    def allows(self, index: int) -> bool:
        """Whether training batch `index` of the epoch is taken (then counted)."""
        if self.limit > 0:
            if self.totals.training_macs + self.spent >= self.limit:
                return False
            first = self.epoch == 1 and index == 0
            self.spent += self.step_macs[index] + (self.task.setup_macs() if first else 0.0)
        self.taken += 1
        return True

    def tokens_taken(self) -> int:
        return sum(self.task.tokens_in(i) for i in range(self.taken))


def _stage_start(model: EarlyExitLM, cfg: StageSettings, opt: OptimizerSettings,
                 resume: dict) -> tuple:
    """The stage's optimizer, early stopping and best weights: new, or as `resume` left them."""
    optimizer = make_optimizer(model, cfg.lr, opt)
    stopping = EarlyStopping.restored(resume["early"]) if resume else EarlyStopping(cfg.patience)
    if resume.get("optimizer"):
        optimizer.load_state_dict(resume["optimizer"])
    return optimizer, stopping, resume.get("best_state") or snapshot(model)


def _validated(stage: int, epoch: int, task: StageTask, control: RunControl,
               seconds: float) -> tuple:
    """The epoch's validation, its hard PPL, and `seconds` plus the seconds they took."""
    task.model.eval()
    started, where = time.perf_counter(), f"stage {stage}, epoch {epoch}, validation"
    result, hard_ppl = task.validate(lambda: control.checkpoint(where)), task.hard_ppl()
    return result, hard_ppl, seconds + (time.perf_counter() - started)


def run_stage(stage: int, task: StageTask, cfg: StageSettings, opt: OptimizerSettings,
              control: RunControl, emit: Callable[[Event], None],
              progress_events_per_epoch: int = 100,
              on_improved: Optional[Callable[[int, dict], None]] = None,
              on_epoch_end: Optional[Callable[[dict], None]] = None,
              resume: Optional[dict] = None, micro_batch_size: int = 0,
              compile_model: bool = False, totals: Optional[RunTotals] = None,
              budget_macs: float = 0.0) -> StageOutcome:
    """Trains with early stopping on validation PPL, restores the best weights and returns the
    outcome. `on_improved(epoch, state)` runs at every new best (the best checkpoint is on disk
    whatever happens next); `on_epoch_end(progress)` gets what resuming after the epoch needs;
    `resume`: such a dict (plus "best_state"); `totals`: the run's; `budget_macs`: its limit."""
    model = task.model
    if compile_model:
        compile_blocks(model)
    optimizer, stopping, best_state = _stage_start(model, cfg, opt, resume or {})
    totals = RunTotals() if totals is None else totals  # (alone: the stage's)
    budget = TrainingBudget(budget_macs, totals, task)
    schedule = LrSchedule.of_stage(cfg.lr, opt, cfg.max_epochs, task.num_batches())
    epoch = stopping.epoch
    while epoch < cfg.max_epochs and not stopping.should_stop and not budget.ends_stage(epoch):
        epoch += 1
        with compile_failures_named(compile_model):
            train_ppl, seconds = train_epoch(stage, epoch, task, optimizer, opt, control, emit,
                                             progress_events_per_epoch, micro_batch_size,
                                             schedule.in_epoch(epoch), budget.start(epoch))
        result, hard_ppl, seconds = _validated(stage, epoch, task, control, seconds)
        improved = stopping.update(epoch, result.ppl, result.accuracy, hard_ppl)
        stopping.seconds = round(stopping.seconds + seconds, 3)
        macs = stopping.count(task.epoch_compute(epoch, result, budget.taken))
        if improved:
            best_state = snapshot(model)
            if on_improved:
                on_improved(epoch, best_state)
        ended = EpochEnded(
            stage=stage, epoch=epoch, train_ppl=train_ppl, val_ppl=result.ppl,
            val_acc=result.accuracy, improved=improved, patience_counter=stopping.counter,
            patience=cfg.patience, best_epoch=stopping.best_epoch,
            best_val_ppl=stopping.best_ppl, seconds=round(seconds, 3), hard_ppl=hard_ppl,
            shallow_ratio=result.exit_ratios[0] if task.cascade.last else None, **macs,
            lr=schedule.epoch_lr(epoch, budget.taken), **task.epoch_fields(result),
            **totals.add(budget.tokens_taken(), macs["training_macs"]))
        stopping.history.append({k: getattr(ended, k) for k in EPOCH})
        emit(ended)
        # After the event: a kill in between repeats this epoch rather than losing it.
        if on_epoch_end:
            on_epoch_end({"epoch": epoch, "model": model.state_dict(),
                          "optimizer": optimizer.state_dict(), "early": dict(vars(stopping))})
    model.load_state_dict(best_state)
    return stopping.outcome(stage, epoch, budget.spent_before())


def host_reads_are_cheap(device: torch.device) -> bool:
    """Whether reading a value of `device` on the host costs no wait: on the CPU the value
    is there; on a GPU the host waits for everything queued before it."""
    return device.type == "cpu"


def clip_gradients(params: list, max_norm: float) -> None:
    """clip_grad_norm_, bit for bit. On the CPU without its multiply by exactly 1 when the norm
    is within the limit (torch always multiplies, to spare a GPU a sync): a pass less over the
    head's gradient in every step not clipped; on a GPU as torch does (the host never waits)."""
    total = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
    if not host_reads_are_cheap(total.device) or bool(max_norm / (total + 1e-6) < 1.0):
        torch.nn.utils.clip_grads_with_norm_(params, max_norm, total)


class _TaskLoss(torch.nn.Module):
    """A task's loss as a module, so that DistributedDataParallel can wrap it."""

    def __init__(self, task: StageTask):
        super().__init__()
        self.model, self.task = task.model, task

    def forward(self, index: int, rows: Optional[slice] = None) -> torch.Tensor:
        return self.task.loss(index) if rows is None else self.task.loss(index, rows)


def data_parallel(task: StageTask) -> Callable[..., torch.Tensor]:
    """The task's loss; under torchrun through DistributedDataParallel, which averages the gradients
    over the ranks during backward (wrapped once per stage: wrapping broadcasts every parameter)."""
    if not task.world.parallel:
        return task.loss
    if task.wrapped is None:
        from torch.nn.parallel import DistributedDataParallel

        task.wrapped = DistributedDataParallel(_TaskLoss(task))
    return task.wrapped


def accumulate_gradients(task: StageTask, loss_of: Callable[..., torch.Tensor], index: int,
                         micro_batch_size: int, running: torch.Tensor) -> None:
    """Forward and backward of batch `index`, micro-batch by micro-batch (StageTask.loss weights
    each by its share of the batch's tokens), adding the losses to `running` on the device.
    Under torchrun the ranks average their gradients once, in the last micro-batch's backward."""
    parts = task.micro_batches(index, micro_batch_size)
    for k, rows in enumerate(parts):
        alone = task.wrapped is None or k == len(parts) - 1
        with nullcontext() if alone else task.wrapped.no_sync():
            loss = loss_of(index) if rows is None else loss_of(index, rows)
            running += loss.detach()
            loss.backward()


def train_epoch(stage: int, epoch: int, task: StageTask, optimizer, opt: OptimizerSettings,
                control: RunControl, emit: Callable[[Event], None],
                progress_events_per_epoch: int, micro_batch_size: int = 0,
                lr_at: Optional[Callable[[int], float]] = None,
                may_step: Optional[Callable[[int], bool]] = None) -> tuple[float, float]:
    """One pass over the task's batches; the train PPL and the seconds it took. The losses add
    up on the device: the host waits for them only where a BatchProgress event is due (every
    `every` batches and at the end) and checks them there, after the batches since the last.
    `lr_at(b)`: batch b's learning rate (None: the optimizer's, untouched); `may_step(b)`:
    whether batch b is trained, else the epoch ends before it (the train PPL is then over the
    batches trained; nan if none)."""
    model, batches, world = task.model, task.num_batches(), task.world
    params = [p for p in model.parameters() if p.requires_grad]
    every = max(1, math.ceil(batches / progress_events_per_epoch))
    model.train()
    loss_of = data_parallel(task)
    running = torch.zeros((), dtype=torch.float64, device=model.head.weight.device)
    seconds, tokens, checked, loss_sum = 0.0, 0, 0, math.nan
    go_on = batches > 0 and (may_step is None or may_step(0))
    for b in range(batches):
        if not go_on:
            break
        control.checkpoint(f"stage {stage}, epoch {epoch}, batch {b + 1}/{batches}")
        started = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        accumulate_gradients(task, loss_of, b, micro_batch_size, running)
        clip_gradients(params, opt.grad_clip)
        if lr_at is not None:
            for group in optimizer.param_groups:
                group["lr"] = lr_at(b)
        optimizer.step()
        tokens += task.tokens_in(b)
        go_on = b + 1 < batches and (may_step is None or may_step(b + 1))
        if go_on and (b + 1) % every:
            seconds += time.perf_counter() - started
            continue
        loss_sum = float(world.sum(running.clone())) / world.size  # the one wait
        seconds += time.perf_counter() - started
        if not math.isfinite(loss_sum):
            raise NumericFault(stage, epoch, b + 1, loss_sum, since=checked + 1)
        checked, rate = b + 1, (tokens / seconds if seconds > 0 else 0.0)
        left = sum(task.tokens_in(i) for i in range(b + 1, batches)) if go_on else 0
        emit(BatchProgress(stage=stage, epoch=epoch, batch=b + 1, batches=batches,
                           loss=loss_sum / (b + 1), tokens_per_s=round(rate, 1),
                           eta_s=round(left / rate, 1) if rate > 0 else 0.0))
    return (math.exp(loss_sum / checked) if checked else math.nan), seconds


def compile_blocks(model: EarlyExitLM) -> None:
    """run.compile: every block's forward through torch.compile, in place (the weights'
    names, hence checkpoints, stay as they are). Compiling happens at a block's first call."""
    try:
        for block in model.layers:
            block.compile()
    except Exception as e:  # noqa: BLE001 - torch raises many types; the key is what to name
        raise CompileFailed(e) from None


@contextmanager
def compile_failures_named(compiling: bool) -> Iterator[None]:
    """A failure of torch.compile (at a block's first call) as one line naming run.compile."""
    try:
        yield
    except Exception as e:
        if compiling and _is_compile_failure(e):
            raise CompileFailed(e) from None
        raise


def _is_compile_failure(e: Exception) -> bool:
    from torch._dynamo.exc import TorchDynamoException

    return isinstance(e, TorchDynamoException)
