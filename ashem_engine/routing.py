"""Routed (early-exit) inference and its cost accounting.

A token leaves at the first exit whose confidence reaches that exit's threshold; the last
exit takes the rest. With two exits this is the spec's two-stage inference: layer 2 if
confidence >= threshold, else layer 4. The cost of each path is costs.py's.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import torch

from .data import Batches
from .costs import CLASSIFIER, PROPAGATED, SEQUENCE, SOFTMAX, TOKEN, CostModel
from .head import ExitStats, exit_stats
from .model import EarlyExitLM


def exits_here(confidence: torch.Tensor, threshold: float) -> torch.Tensor:
    """The exit rule: a token leaves when its confidence reaches the threshold."""
    return confidence >= threshold


def route(confidences: Sequence[torch.Tensor], thresholds: Sequence[float]) -> torch.Tensor:
    """Exit index per token (0-based) from the confidences at exits 0..N-2."""
    if len(confidences) != len(thresholds):
        raise ValueError("one confidence tensor per threshold (exits before the last)")
    n = confidences[0].numel() if confidences else 0
    chosen = torch.full((n,), len(thresholds), dtype=torch.long)
    undecided = torch.ones(n, dtype=torch.bool)
    for e, (conf, tau) in enumerate(zip(confidences, thresholds)):
        leave = undecided & exits_here(conf.reshape(-1).cpu(), tau)
        chosen[leave] = e
        undecided &= ~leave
    return chosen


def spec_compute_cost(exit_counts: Sequence[int], exit_layers: Sequence[int]) -> float:
    """The spec's formula: sum(tokens at exit e × layers of e) / (tokens × deepest layers)."""
    tokens = sum(exit_counts)
    return sum(c * l for c, l in zip(exit_counts, exit_layers)) / (tokens * exit_layers[-1])


@dataclass
class Evaluation:
    tokens: int
    nll_sum: float
    correct: int
    exit_layers: list
    exit_counts: list
    compute_cost: float  # averaged per batch, as the reference does
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


def advance(model: EarlyExitLM, h: torch.Tensor, start: int, stop: int, mode: str,
            active: Optional[torch.Tensor] = None) -> torch.Tensor:
    """(B, T, dim) hidden states after layer `start` -> after layer `stop`, computed for every
    token (the compute-everything reference; inference.py computes only what is needed).
    `active` (B, T) marks the tokens still undecided; PROPAGATED keeps the others' states."""
    if mode == SEQUENCE:
        return model.run_layers(h, start, stop)
    if mode == TOKEN:
        B, T, C = h.shape
        return model.run_layers(h.reshape(B * T, 1, C), start, stop).reshape(B, T, C)
    if mode != PROPAGATED:
        raise ValueError(f"unknown inference mode {mode!r}")
    keep = ~active[..., None]
    held = h
    for block in model.layers[start:stop]:
        h = torch.where(keep, held, block(h))
    return h


def exit_scores(h: torch.Tensor, stats: ExitStats, classifier=None) -> torch.Tensor:
    """What an exit decides on: max-softmax confidence, or a learned classifier's score."""
    return stats.confidence if classifier is None else classifier.score(h)


@dataclass
class RoutedTokens:
    """Per token of one batch: the exit it left at, its NLL and correctness there, and its
    hidden state at that exit (so logits = head(hidden))."""

    exit_index: torch.Tensor  # (N,) long
    nll: torch.Tensor  # (N,)
    correct: torch.Tensor  # (N,) bool
    hidden: torch.Tensor  # (N, dim)


@torch.no_grad()
def route_everything(model: EarlyExitLM, x: torch.Tensor, y: torch.Tensor,
                     exit_layers: Sequence[int], thresholds: Sequence[float],
                     modes: Sequence[str], classifiers: Optional[Sequence] = None,
                     lower: Optional[torch.Tensor] = None, all_heads: bool = False
                     ) -> RoutedTokens:
    """One batch through every block for every token (the reference routed evaluation);
    each exit's head runs for the tokens still undecided there, or with `all_heads` for
    every token at every exit, deciding afterwards (what the bench calls computing
    everything; the results are the same)."""
    weight = model.head.weight
    y = y.reshape(-1)
    n, last = y.numel(), len(exit_layers) - 1
    nll = torch.empty(n, device=y.device)
    hit = torch.empty(n, dtype=torch.bool, device=y.device)
    exit_index = torch.full((n,), last, dtype=torch.long, device=y.device)
    out = torch.empty(n, weight.shape[1], device=y.device)
    undecided = torch.arange(n, device=y.device)
    active = torch.ones(n, dtype=torch.bool, device=y.device)
    for e, layer in enumerate(exit_layers):
        if e == 0:
            h = lower if lower is not None else model.hidden(x, stop=layer)
        else:
            h = advance(model, h, exit_layers[e - 1], layer, modes[e - 1],
                        active.view(x.shape))
        if all_heads:
            everyone = exit_stats(h.reshape(n, -1), weight, y)
            s = type(everyone)(everyone.nll[undecided], everyone.confidence[undecided],
                               everyone.correct[undecided])
            flat = h.reshape(n, -1)[undecided]
        else:
            flat = h.reshape(n, -1)[undecided]
            s = exit_stats(flat, weight, y[undecided])
        if e < last:
            leave = exits_here(exit_scores(flat, s, classifiers[e] if classifiers else None),
                               thresholds[e])
        else:
            leave = torch.ones_like(s.confidence, dtype=torch.bool)
        idx = undecided[leave]
        nll[idx], hit[idx], out[idx] = s.nll[leave], s.correct[leave], flat[leave]
        exit_index[idx] = e
        active[idx] = False
        undecided = undecided[~leave]
    return RoutedTokens(exit_index, nll, hit, out)


@torch.no_grad()
def evaluate(model: EarlyExitLM, batches: Batches, exit_layers: Sequence[int],
             thresholds: Sequence[float], check: Optional[Callable[[int], None]] = None,
             lower_hidden: Optional[torch.Tensor] = None, modes: Optional[Sequence[str]] = None,
             classifiers: Optional[Sequence] = None) -> Evaluation:
    """Routed evaluation over a split, computing everything (route_everything). With one
    exit it is plain evaluation. `modes`: how the layers after each exit run (default the
    spec's SEQUENCE); `classifiers` (one per exit before the last) replace max-softmax as the
    exit signal; `lower_hidden` (batches, B, T, dim) can hold the frozen first exit's hidden
    states, computed once per stage instead of once per epoch.
    """
    if len(batches) == 0:
        raise ValueError("evaluate needs at least one batch")
    modes = tuple(modes) if modes is not None else (SEQUENCE,) * (len(exit_layers) - 1)
    nll_sum, correct, tokens = 0.0, 0, 0
    counts = [0] * len(exit_layers)
    batch_costs = []
    for i in range(len(batches)):
        if check:
            check(i)
        r = route_everything(model, batches.x[i], batches.y[i], exit_layers, thresholds, modes,
                             classifiers, None if lower_hidden is None else lower_hidden[i])
        batch_counts = torch.bincount(r.exit_index, minlength=len(exit_layers)).tolist()
        nll_sum += float(r.nll.double().sum())
        correct += int(r.correct.sum())
        tokens += r.nll.numel()
        counts = [a + b for a, b in zip(counts, batch_counts)]
        batch_costs.append(spec_compute_cost(batch_counts, exit_layers))
    fractions = [c / tokens for c in counts]
    costs = CostModel(model.cfg, model.vocab_size, batches.x.shape[-1], tuple(exit_layers),
                      modes, CLASSIFIER if classifiers else SOFTMAX)
    return Evaluation(tokens, nll_sum, correct, list(exit_layers), counts,
                      sum(batch_costs) / len(batch_costs), costs.relative(fractions),
                      list(thresholds), costs.absolute(fractions))
