"""Routed (early-exit) inference and its cost accounting.

A token leaves at the first exit whose confidence reaches that exit's threshold; the last
exit takes the rest. With two exits this is the spec's two-stage inference: layer 2 if
confidence >= threshold, else layer 4.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import torch

from .data import Batches
from .head import exit_stats
from .model import EarlyExitLM, block_macs_per_token, head_macs_per_token


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


def honest_cost(exit_fractions: Sequence[float], exit_layers: Sequence[int],
                block_macs: float, head_macs: float) -> float:
    """Multiply-accumulates per token relative to the plain deepest model (all its blocks and
    one head). A token leaving at exit e ran exit_layers[e] blocks and e + 1 heads: every exit
    it passed evaluated the head once to measure its confidence."""
    plain = exit_layers[-1] * block_macs + head_macs
    spent = sum(f * (l * block_macs + (e + 1) * head_macs)
                for e, (f, l) in enumerate(zip(exit_fractions, exit_layers)))
    return spent / plain


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


@torch.no_grad()
def evaluate(model: EarlyExitLM, batches: Batches, exit_layers: Sequence[int],
             thresholds: Sequence[float], check: Optional[Callable[[int], None]] = None,
             lower_hidden: Optional[torch.Tensor] = None) -> Evaluation:
    """Routed evaluation over whole sequences. With one exit this is plain evaluation.

    Each exit's head runs only for the tokens still undecided there (its confidence decides
    who leaves); the blocks run over whole sequences, as in the reference, because later
    tokens attend to earlier ones. `lower_hidden` (batches, B, T, dim) can hold the frozen
    first exit's hidden states, computed once per stage instead of once per epoch.
    """
    if len(batches) == 0:
        raise ValueError("evaluate needs at least one batch")
    weight = model.head.weight
    dim = weight.shape[1]
    seq_len = batches.x.shape[-1]
    nll_sum, correct, tokens = 0.0, 0, 0
    counts = [0] * len(exit_layers)
    batch_costs = []
    for i in range(len(batches)):
        if check:
            check(i)
        y = batches.y[i].reshape(-1)
        n = y.numel()
        nll = torch.empty(n, device=y.device)
        hit = torch.empty(n, dtype=torch.bool, device=y.device)
        undecided = torch.arange(n, device=y.device)
        h, done_layers = None, 0
        batch_counts = []
        for e, layer in enumerate(exit_layers):
            if e == 0 and lower_hidden is not None:
                h = lower_hidden[i]
            elif h is None:
                h = model.hidden(batches.x[i], stop=layer)
            else:
                h = model.run_layers(h, done_layers, layer)
            done_layers = layer
            flat = h.reshape(-1, dim)[undecided]
            s = exit_stats(flat, weight, y[undecided])
            if e < len(exit_layers) - 1:
                leave = exits_here(s.confidence, thresholds[e])
            else:
                leave = torch.ones_like(s.confidence, dtype=torch.bool)
            idx = undecided[leave]
            nll[idx] = s.nll[leave]
            hit[idx] = s.correct[leave]
            batch_counts.append(int(leave.sum()))
            undecided = undecided[~leave]
        nll_sum += float(nll.double().sum())
        correct += int(hit.sum())
        tokens += n
        counts = [a + b for a, b in zip(counts, batch_counts)]
        batch_costs.append(spec_compute_cost(batch_counts, exit_layers))
    fractions = [c / tokens for c in counts]
    cfg = model.cfg
    block, head = block_macs_per_token(cfg, seq_len), head_macs_per_token(cfg, model.vocab_size)
    honest = honest_cost(fractions, exit_layers, block, head)
    plain = exit_layers[-1] * block + head
    return Evaluation(tokens, nll_sum, correct, list(exit_layers), counts,
                      sum(batch_costs) / len(batch_costs), honest, list(thresholds),
                      honest * plain)
