"""Routed evaluation over a split: PPL, accuracy, where tokens leave and what they cost."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import torch

from .cascade import Cascade, ExitPass, route
from .costs import spec_cost
from .data import Batches
from .model import EarlyExitLM


@dataclass
class Evaluation:
    tokens: int
    nll_sum: float
    correct: int
    exit_layers: list
    exit_counts: list
    spec_cost: float  # averaged per batch, as the reference does
    honest_cost: float
    thresholds: list = field(default_factory=list)
    macs_per_token: float = 0.0  # what honest_cost is relative to: absolute, per token

    @property
    def ppl(self) -> float:
        return math.exp(self.nll_sum / self.tokens)

    @property
    def accuracy(self) -> float:
        return self.correct / self.tokens

    @property
    def exit_ratios(self) -> list:
        return [c / self.tokens for c in self.exit_counts]


class Tally:
    """Sums routed tokens into an Evaluation of one cascade."""

    def __init__(self, cascade: Cascade):
        self.cascade = cascade
        self.nll_sum, self.correct, self.tokens = 0.0, 0, 0
        self.counts = [0] * len(cascade.exits)
        self.batch_costs = []

    def add(self, exit_index: torch.Tensor, nll: torch.Tensor, correct: torch.Tensor,
            batch_tokens: int) -> None:
        """Tokens of one or more whole batches of `batch_tokens` tokens each."""
        self.nll_sum += float(nll.double().sum())
        self.correct += int(correct.sum())
        self.tokens += nll.numel()
        exits = len(self.cascade.exits)
        for batch in exit_index.view(-1, batch_tokens):
            counts = torch.bincount(batch, minlength=exits).tolist()
            self.counts = [a + b for a, b in zip(self.counts, counts)]
            self.batch_costs.append(spec_cost(counts, self.cascade.layers))

    def evaluation(self, model: EarlyExitLM, seq_len: int) -> Evaluation:
        fractions = [c / self.tokens for c in self.counts]
        costs = self.cascade.costs(model, seq_len)
        return Evaluation(self.tokens, self.nll_sum, self.correct, self.cascade.layers,
                          self.counts, sum(self.batch_costs) / len(self.batch_costs),
                          costs.relative(fractions), self.cascade.thresholds,
                          costs.absolute(fractions))


@torch.no_grad()
def evaluate(model: EarlyExitLM, batches: Batches, cascade: Cascade,
             check: Optional[Callable[[], None]] = None,
             first: Optional[ExitPass] = None) -> Evaluation:
    """Routed evaluation over a split; with one exit it is plain evaluation. The real early
    exit where it does the same arithmetic as computing everything, else computing
    everything. `first`: the split's first exit when it is known (a frozen first stage's
    states, a sweep's states and statistics). `check()` runs before every batch."""
    if len(batches) == 0:
        raise ValueError("evaluate needs at least one batch")
    tally, n = Tally(cascade), batches.y[0].numel()
    for i in range(len(batches)):
        if check:
            check()
        known = None if first is None else first.rows(slice(i * n, (i + 1) * n))
        r = route(model, cascade, batches.x[i], batches.y[i], known,
                  only_needed=cascade.routed_sparsely_exact)
        tally.add(r.exit_index, r.nll, r.correct, n)
    return tally.evaluation(model, batches.x.shape[-1])

