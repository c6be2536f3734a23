"""The quality/cost sweep: PPL against honest compute over a range of exit thresholds.

A sweep point is a quantile q: each exit's threshold is the q-quantile of its signal over
the tokens of the mining split that reach it (the spec's calibration rule at q = 0.5), so q
is about the fraction of tokens sent deeper. q = 0 lets every token leave at the first exit,
q = 1 sends every token to the last. Calibrating on the mining split and reporting on the
report split keeps the report split out of every decision. Thresholds are recalibrated on
the final model, so the q = 0.5 point need not equal the run's own final evaluation, whose
threshold was fixed before the later stages trained the shared head.
"""
from __future__ import annotations

import math
from typing import Callable, Optional, Sequence

import torch

from .costs import CLASSIFIER, PROPAGATED, SOFTMAX, CostModel
from .data import Batches
from .head import exit_stats
from .mining import exit_pass, quantile_threshold
from .model import EarlyExitLM
from .routing import advance, evaluate, exits_here, route, spec_compute_cost
from .signals import ExitClassifier, train_exit_classifier


def sweep_quantiles(points: int) -> list[float]:
    return [round(k / (points - 1), 6) for k in range(points)]


def threshold_at(scores: torch.Tensor, q: float) -> float:
    if q <= 0.0:
        return -math.inf
    if q >= 1.0:
        return math.inf
    return quantile_threshold(scores, q)


def train_classifiers(model: EarlyExitLM, mining: Batches, exit_layers: Sequence[int],
                      thresholds: Sequence[float], modes: Sequence[str], seed: int,
                      check: Optional[Callable] = None) -> list[ExitClassifier]:
    """One exit classifier per exit before the last, on the mining-split tokens reaching it
    under the run's own routing."""
    out = []
    for k, layer in enumerate(exit_layers[:-1]):
        passed = exit_pass(model, mining, layer, check, exit_layers[:k], thresholds[:k],
                           modes[:k])
        keep = passed.reaching if passed.reaching is not None else slice(None)
        out.append(train_exit_classifier(passed.hidden[keep], passed.stats.confidence[keep],
                                         seed=seed + k))
    return out


def calibrate(model: EarlyExitLM, mining: Batches, exit_layers: Sequence[int],
              modes: Sequence[str], q: float, classifiers: Optional[Sequence],
              first_scores: torch.Tensor, check: Optional[Callable] = None) -> list[float]:
    """Thresholds for quantile q, exit by exit (a later exit's population depends on the
    earlier thresholds). `first_scores`: the first exit's signal over the mining split."""
    thresholds = [threshold_at(first_scores, q)]
    for k in range(1, len(exit_layers) - 1):
        passed = exit_pass(model, mining, exit_layers[k], check, exit_layers[:k], thresholds,
                           modes[:k])
        scores = passed.stats.confidence if classifiers is None else \
            classifiers[k].score(passed.hidden)
        population = scores[passed.reaching]
        thresholds.append(threshold_at(population, q) if population.numel() else math.inf)
    return thresholds


class _Table:
    """Every exit's statistics for every token of a split, when no inference mode depends
    on the routing (no PROPAGATED): then one pass serves every threshold."""

    def __init__(self, model, batches: Batches, exit_layers, modes, classifiers, check):
        weight = model.head.weight
        self.nll, self.correct, self.softmax, self.classifier = [], [], [], []
        for e in range(len(exit_layers)):
            for lst in (self.nll, self.correct, self.softmax, self.classifier):
                lst.append([])
        for i in range(len(batches)):
            if check:
                check(i)
            x, y = batches.x[i], batches.y[i].reshape(-1)
            h = model.hidden(x, stop=exit_layers[0])
            for e, layer in enumerate(exit_layers):
                if e:
                    h = advance(model, h, exit_layers[e - 1], layer, modes[e - 1])
                flat = h.reshape(y.numel(), -1)
                s = exit_stats(flat, weight, y)
                self.nll[e].append(s.nll)
                self.correct[e].append(s.correct)
                self.softmax[e].append(s.confidence)
                if classifiers and e < len(classifiers):
                    self.classifier[e].append(classifiers[e].score(flat))
        cat = lambda lists: [torch.cat(v) if v else None for v in lists]  # noqa: E731
        self.nll, self.correct = cat(self.nll), cat(self.correct)
        self.softmax, self.classifier = cat(self.softmax), cat(self.classifier)
        self.per_batch = batches.y[0].numel()

    def point(self, thresholds, signal: str, exit_layers):
        scores = self.softmax if signal == SOFTMAX else self.classifier
        chosen = route(scores[: len(thresholds)], thresholds).to(self.nll[0].device)
        nll = torch.stack(self.nll).gather(0, chosen[None]).squeeze(0)
        correct = torch.stack(self.correct).gather(0, chosen[None]).squeeze(0)
        counts = torch.bincount(chosen, minlength=len(exit_layers))
        per_batch = chosen.view(-1, self.per_batch)
        batch_costs = [spec_compute_cost(torch.bincount(row, minlength=len(exit_layers))
                                         .tolist(), exit_layers) for row in per_batch]
        return (float(nll.double().sum()), int(correct.sum()), counts.tolist(),
                sum(batch_costs) / len(batch_costs))


class _Propagated:
    """Two exits, upper layers propagated: the first exit's states and statistics do not
    depend on the threshold, so they are computed once; each threshold re-runs only the
    upper layers and the deep tokens' head."""

    def __init__(self, model, batches: Batches, exit_layers, classifiers, check):
        self.model, self.batches, self.exit_layers = model, batches, list(exit_layers)
        self.lower, self.first, self.scores = [], [], []
        for i in range(len(batches)):
            if check:
                check(i)
            h = model.hidden(batches.x[i], stop=exit_layers[0])
            flat = h.reshape(-1, h.shape[-1])
            self.lower.append(h)
            self.first.append(exit_stats(flat, model.head.weight, batches.y[i]))
            self.scores.append(classifiers[0].score(flat) if classifiers else None)

    def point(self, thresholds, signal: str, exit_layers):
        weight, (low, high) = self.model.head.weight, self.exit_layers
        nll_sum, correct, counts, batch_costs = 0.0, 0, [0, 0], []
        for i, (h, first) in enumerate(zip(self.lower, self.first)):
            y = self.batches.y[i].reshape(-1)
            scores = first.confidence if signal == SOFTMAX else self.scores[i]
            deep = ~exits_here(scores, thresholds[0])
            upper = advance(self.model, h, low, high, PROPAGATED, deep.view(h.shape[:2]))
            s = exit_stats(upper.reshape(y.numel(), -1)[deep], weight, y[deep])
            nll_sum += float(first.nll[~deep].double().sum()) + float(s.nll.double().sum())
            correct += int(first.correct[~deep].sum()) + int(s.correct.sum())
            batch = [int((~deep).sum()), int(deep.sum())]
            counts = [a + b for a, b in zip(counts, batch)]
            batch_costs.append(spec_compute_cost(batch, exit_layers))
        return nll_sum, correct, counts, sum(batch_costs) / len(batch_costs)


def _point(q, thresholds, tokens, nll_sum, correct, counts, spec_cost, costs: CostModel,
           plain: float):
    fractions = [c / tokens for c in counts]
    return {"quantile": q, "thresholds": [float(t) for t in thresholds],
            "ppl": math.exp(nll_sum / tokens), "accuracy": correct / tokens,
            "exit_ratios": fractions, "deep_ratio": 1.0 - fractions[0],
            "spec_cost": spec_cost, "honest_cost": costs.absolute(fractions) / plain,
            "macs_per_token": costs.absolute(fractions), "pareto": False}


@torch.no_grad()
def sweep(model: EarlyExitLM, mining: Batches, report: Batches, exit_layers: Sequence[int],
          modes: Sequence[str], signals: Sequence[str], points: int,
          classifiers: Optional[Sequence[ExitClassifier]] = None,
          check: Optional[Callable] = None) -> list[dict]:
    """One series per signal: a point per quantile, on the report split."""
    exit_layers, modes = list(exit_layers), tuple(modes)
    seq_len = report.x.shape[-1]
    first = exit_pass(model, mining, exit_layers[0], check)
    if PROPAGATED not in modes:
        table = _Table(model, report, exit_layers, modes, classifiers, check)
    elif len(exit_layers) == 2:
        table = _Propagated(model, report, exit_layers, classifiers, check)
    else:
        table = None  # a later exit's states depend on every earlier decision
    series = []
    for signal in signals:
        clf = classifiers if signal == CLASSIFIER else None
        first_scores = first.stats.confidence if clf is None else clf[0].score(first.hidden)
        costs = CostModel(model.cfg, model.vocab_size, seq_len, tuple(exit_layers), modes,
                          signal)
        out = []
        for q in sweep_quantiles(points):
            thresholds = calibrate(model, mining, exit_layers, modes, q, clf, first_scores,
                                   check)
            if table is not None:
                nll_sum, correct, counts, spec_cost = table.point(thresholds, signal,
                                                                 exit_layers)
                tokens = report.tokens
            else:
                r = evaluate(model, report, exit_layers, thresholds, check, modes=modes,
                             classifiers=clf)
                nll_sum, correct, counts, spec_cost, tokens = (
                    r.nll_sum, r.correct, r.exit_counts, r.compute_cost, r.tokens)
            out.append(_point(q, thresholds, tokens, nll_sum, correct, counts, spec_cost,
                              costs, costs.plain()))
        name = "max-softmax" if signal == SOFTMAX else "exit classifier"
        series.append({"name": f"ASHEM · {name}", "kind": "sweep", "signal": signal,
                       "points": out})
    return series


def single_point(name: str, evaluation, costs: CostModel, plain: float, deepest: int,
                 kind: str = "baseline", signal: Optional[str] = None) -> dict:
    """A series of one point: a baseline model, or the run's own final evaluation. `plain`:
    the MACs per token honest_cost is relative to (the run's plain deepest model), and
    `deepest` its layers, which the spec's cost counts against."""
    spec_cost = evaluation.compute_cost * evaluation.exit_layers[-1] / deepest
    p = _point(None, evaluation.thresholds, evaluation.tokens, evaluation.nll_sum,
               evaluation.correct, evaluation.exit_counts, spec_cost, costs, plain)
    return {"name": name, "kind": kind, "signal": signal, "points": [p]}
