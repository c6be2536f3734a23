"""The quality/cost sweep: PPL against honest compute over a range of exit thresholds.

A sweep point is a quantile q: each exit's threshold is the q-quantile of its signal over the
mining split's tokens that reach it (the spec's rule at q = 0.5): q is about the fraction sent
deeper (0: none, 1: all). The report split takes no part in any decision. Thresholds are
recalibrated on the final model, so the q = 0.5 point need not equal the final evaluation."""
from __future__ import annotations

import math
from dataclasses import replace
from typing import Callable, Optional, Sequence

import torch

from .cascade import Cascade, Evaluation, ExitPass, evaluate, route, tally
from .costs import CostModel
from .data import Batches
from .dist import World
from .head import ExitStats
from .mining import exit_pass, quantile_threshold
from .model import EarlyExitLM
from .exit_signals import SIGNALS
from .names import PROPAGATED


def sweep_quantiles(points: int) -> list[float]:
    return [round(k / (points - 1), 6) for k in range(points)]


def threshold_at(scores: torch.Tensor, q: float) -> float:
    if q <= 0.0:
        return -math.inf
    if q >= 1.0:
        return math.inf
    return quantile_threshold(scores, q)


def train_signal(model: EarlyExitLM, mining: Batches, cascade: Cascade, signal: str, seed: int,
                 check: Callable[[], None] = lambda: None) -> list:
    """A trained signal's scorer for each exit before the last (exit_signals), trained on
    the mining-split tokens reaching it under the run's own routing."""
    train, out = SIGNALS[signal].train, []
    for k in range(cascade.last):
        passed = exit_pass(model, mining, cascade.first(k + 1), check)
        keep = passed.remaining if passed.remaining is not None else slice(None)
        out.append(train(model.to_head(passed.hidden[keep]), passed.stats[keep], seed + k,
                         World.current()))
    return out


def calibrate(model: EarlyExitLM, mining: Batches, cascade: Cascade, q: float,
              first: ExitPass, check: Callable[[], None] = lambda: None) -> Cascade:
    """The cascade with thresholds for quantile q, exit by exit: a later exit's population (routed
    by the signal's `population_routed_by`) depends on the earlier ones. `first`: the first exit."""
    thresholds, passed, world = [], first, World.current()
    routing = cascade.exit_signal.population_routed_by
    router = cascade if routing is None else cascade.signalled_by(routing)
    for k in range(cascade.last):
        if k:
            reaching = replace(router.first(k + 1), thresholds=thresholds)
            passed = exit_pass(model, mining, reaching, check)
        scores = world.gather_tokens(
            cascade.scores(k, model.to_head(passed.hidden), passed.stats, model.head.weight),
            mining)
        population = scores if passed.remaining is None else \
            scores[world.gather_tokens(passed.remaining, mining)]
        thresholds.append(threshold_at(population, q) if population.numel() else math.inf)
    return replace(cascade, thresholds=thresholds)


def every_exit_table(model: EarlyExitLM, batches: Batches, cascade: Cascade,
                     signalled: Sequence[Cascade], check: Callable[[], None] = lambda: None
                     ) -> Callable[[Cascade], Evaluation]:
    """evaluate() for the cascade under any thresholds and the signal of any of `signalled` (the
    cascade deciding by each signal), when no inference mode depends on the routing (no PROPAGATED):
    every exit's statistics and signals for every token of the split, from one pass."""
    stats, scores, world, head = [], [], World.current(), model.head.weight
    for i in world.each_of_mine(len(batches), check):
        passes = route(model, cascade, *batches.batch(i), every_exit=True).every_exit
        stats.append([p.stats for p in passes])
        scores.append({c.signal: [c.scores(e, model.to_head(p.hidden), p.stats, head)
                                  for e, p in enumerate(passes[:-1])] for c in signalled})

    def whole(t: torch.Tensor) -> torch.Tensor:  # under torchrun: every rank's batches
        return world.gather_tokens(t, batches)
    stats = [ExitStats.cat(per_exit).apply(whole) for per_exit in zip(*stats)]
    signals = {c.signal: [whole(torch.cat(per_exit))
                          for per_exit in zip(*(batch[c.signal] for batch in scores))]
               for c in signalled}
    nll, correct = torch.stack([s.nll for s in stats]), torch.stack([s.correct for s in stats])

    def evaluate_at(thresholded: Cascade) -> Evaluation:
        chosen = thresholded.choose(signals[thresholded.signal]).to(nll.device)
        at_exit = (chosen, nll.gather(0, chosen[None])[0], correct.gather(0, chosen[None])[0])
        return tally(model, thresholded, batches.x.shape[-1], batches.y[0].numel(), [at_exit])
    return evaluate_at


def curve_point(evaluation: Evaluation, costs: CostModel, plain: float,
          quantile: Optional[float] = None, spec_cost: Optional[float] = None) -> dict:
    """One point of a series. `plain`: the MACs per token honest_cost is relative to."""
    fractions = evaluation.exit_ratios
    macs = costs.absolute(fractions)
    return {"quantile": quantile, "thresholds": [float(t) for t in evaluation.thresholds],
            "ppl": evaluation.ppl, "accuracy": evaluation.accuracy,
            "exit_ratios": fractions, "deep_ratio": 1.0 - fractions[0],
            "spec_cost": evaluation.spec_cost if spec_cost is None else spec_cost,
            "honest_cost": macs / plain, "macs_per_token": macs, "pareto": False}


@torch.no_grad()
def sweep(model: EarlyExitLM, mining: Batches, report: Batches, cascade: Cascade,
          signals: Sequence[str], points: int, trained: Optional[dict] = None,
          check: Callable[[], None] = lambda: None, method: str = "ASHEM") -> list[dict]:
    """One series per signal (exit_signals): a point per quantile, on the report split.
    `trained`: by signal, a trained signal's scorers per exit (train_signal); `method`: what
    the series' names say the model is (joint.method_name)."""
    signalled = [cascade.signalled_by(signal, (trained or {}).get(signal)) for signal in signals]
    first = exit_pass(model, mining, cascade.first(1), check)
    if PROPAGATED not in cascade.modes:
        evaluate_at = every_exit_table(model, report, cascade, signalled, check)
    else:  # the first exit does not depend on the thresholds: computed once
        known = exit_pass(model, report, cascade.first(1), check)
        evaluate_at = lambda c: evaluate(model, report, c, check, known)  # noqa: E731
    series = []
    for deciding in signalled:
        costs = deciding.costs(model, report.x.shape[-1])
        out = [curve_point(evaluate_at(calibrate(model, mining, deciding, q, first, check)),
                           costs, costs.plain(), q) for q in sweep_quantiles(points)]
        series.append({"name": f"{method} · {deciding.exit_signal.label}", "kind": "sweep",
                       "signal": deciding.signal, "points": out})
    return series


def one_point_series(name: str, evaluation: Evaluation, costs: CostModel, plain: float,
                 deepest: int, kind: str = "baseline", signal: Optional[str] = None) -> dict:
    """A series of one point: a baseline model, or the run's own final evaluation. `plain`: the
    MACs per token of the run's plain deepest model, and `deepest` its layers (for the costs)."""
    spec_cost = evaluation.spec_cost * evaluation.exit_layers[-1] / deepest
    return {"name": name, "kind": kind, "signal": signal,
            "points": [curve_point(evaluation, costs, plain, spec_cost=spec_cost)]}
