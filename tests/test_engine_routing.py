"""Routed inference: the exit rule, the spec's cost, the honest cost, routed evaluation."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ashem_engine.data import Batches
from ashem_engine.model import EarlyExitLM, block_macs_per_token, head_macs_per_token
from ashem_engine.cascade import Cascade, Evaluation, ExitPass, evaluate
from ashem_engine.costs import spec_cost
from ashem_engine.settings import ModelSettings
from engine_support import single_thread  # noqa: F401  (autouse fixture)

CFG = ModelSettings(dim=16, heads=2, ffn_hidden=32)
VOCAB = 50


# -- the exit rule -------------------------------------------------------------------------

def route(confidences, thresholds):
    layers = [2 * (e + 1) for e in range(len(thresholds) + 1)]
    return Cascade.of(layers, thresholds).choose(confidences)


def test_route_two_exits_ties_leave_early():
    conf = torch.tensor([0.10, 0.50, 0.49999, 0.90, 0.50])
    assert route([conf], [0.5]).tolist() == [1, 0, 1, 0, 0]


def test_route_three_exits_first_exit_that_is_confident_enough():
    c0 = torch.tensor([0.9, 0.2, 0.2, 0.3, 0.6, 0.1])
    c1 = torch.tensor([0.0, 0.8, 0.1, 0.7, 0.0, 0.7])
    # exit 0 at >= 0.6, exit 1 at >= 0.7, else exit 2; a token that left is never re-routed
    assert route([c0, c1], [0.6, 0.7]).tolist() == [0, 1, 2, 1, 0, 1]
    with pytest.raises(ValueError):
        route([c0], [0.6, 0.7])


def test_route_accepts_any_shape():
    conf = torch.tensor([[0.1, 0.9], [0.5, 0.4]])
    assert route([conf], [0.5]).tolist() == [1, 0, 0, 1]


# -- cost accounting -----------------------------------------------------------------------

def test_spec_cost():
    assert spec_cost([70, 30], [2, 4]) == pytest.approx(0.65)
    assert spec_cost([100, 0], [2, 4]) == 0.5
    assert spec_cost([0, 100], [2, 4]) == 1.0
    assert spec_cost([1, 1, 2], [2, 4, 8]) == pytest.approx((2 + 4 + 16) / (4 * 8))


def test_evaluation_properties():
    e = Evaluation(tokens=4, nll_sum=4 * math.log(10), correct=1, exit_layers=[2, 4],
                   exit_counts=[3, 1], spec_cost=0.625, honest_cost=0.9)
    assert e.ppl == pytest.approx(10)
    assert e.accuracy == 0.25
    assert e.exit_ratios == [0.75, 0.25]


# -- routed evaluation against brute force -------------------------------------------------

def setup(layers=4, seed=0, n=3, b=4, t=8):
    torch.manual_seed(seed)
    model = EarlyExitLM(VOCAB, layers, CFG).eval()
    g = torch.Generator().manual_seed(seed + 1)
    batches = Batches(torch.randint(0, VOCAB, (n, b, t), generator=g),
                      torch.randint(0, VOCAB, (n, b, t), generator=g))
    return model, batches


@torch.no_grad()
def logits_at(model, x, layer):
    return model.head(model.hidden(x, stop=layer))


def midpoint_threshold(conf: torch.Tensor, around: float = 0.5) -> float:
    """Halfway across the widest gap between neighbouring confidences near the `around`
    quantile, so that float rounding cannot move a token across the threshold."""
    s = conf.sort().values
    n = len(s)
    lo, hi = int(n * (around - 0.15)), int(n * (around + 0.15))
    gaps = s[lo + 1:hi] - s[lo:hi - 1]
    k = lo + int(gaps.argmax())
    tau = float((s[k] + s[k + 1]) / 2)
    assert (conf - tau).abs().min() > 1e-6
    return tau


@torch.no_grad()
def test_evaluate_two_exits_equals_brute_force():
    model, batches = setup()
    shallow = [logits_at(model, batches.x[i], 2).reshape(-1, VOCAB) for i in range(3)]
    deep = [model(batches.x[i]).reshape(-1, VOCAB) for i in range(3)]
    conf = [s.softmax(-1).max(-1).values for s in shallow]
    tau = midpoint_threshold(torch.cat(conf))

    nll, hits, batch_costs, n_shallow = [], [], [], 0
    for i in range(3):
        y = batches.y[i].reshape(-1)
        use_shallow = conf[i] >= tau
        chosen = torch.where(use_shallow[:, None], shallow[i], deep[i])
        nll.append(F.cross_entropy(chosen, y, reduction="none"))
        hits.append(chosen.argmax(-1) == y)
        s = int(use_shallow.sum())
        n_shallow += s
        batch_costs.append((s * 2 + (len(y) - s) * 4) / (len(y) * 4))
    nll, hits = torch.cat(nll), torch.cat(hits)
    total = nll.numel()

    checked = []
    result = evaluate(model, batches, Cascade.of([2, 4], [tau]),
                      check=lambda: checked.append(len(checked)))
    assert checked == [0, 1, 2]
    assert result.tokens == total == 96
    assert result.ppl == pytest.approx(math.exp(nll.double().mean().item()), rel=1e-5)
    assert result.correct == int(hits.sum())
    assert result.accuracy == pytest.approx(hits.float().mean().item())
    assert result.exit_counts == [n_shallow, total - n_shallow]
    assert 30 < n_shallow < 66
    assert result.exit_ratios == [n_shallow / 96, (96 - n_shallow) / 96]
    assert result.spec_cost == pytest.approx(sum(batch_costs) / 3)
    assert result.exit_layers == [2, 4] and result.thresholds == [tau]
    # spec inference: every token runs all 4 blocks (deep tokens attend to the exited ones'
    # upper layers); the deep ones paid a second head
    block, head = block_macs_per_token(CFG, 8), head_macs_per_token(CFG, VOCAB)
    assert result.honest_cost == pytest.approx(
        (4 * block + head + (1 - n_shallow / 96) * head) / (4 * block + head))

    # the frozen first exit's hidden states, computed once, give the same result
    first = ExitPass(torch.cat([model.hidden(x, stop=2).reshape(-1, CFG.dim)
                                for x in batches.x]))
    cached = evaluate(model, batches, Cascade.of([2, 4], [tau]), first=first)
    assert cached.nll_sum == pytest.approx(result.nll_sum, rel=1e-6)
    assert (cached.correct, cached.exit_counts) == (result.correct, result.exit_counts)


@torch.no_grad()
def test_evaluate_threshold_extremes():
    model, batches = setup(seed=2)
    everyone_leaves = evaluate(model, batches, Cascade.of([2, 4], [0.0]))
    nobody_leaves = evaluate(model, batches, Cascade.of([2, 4], [1.01]))
    assert everyone_leaves.exit_counts == [96, 0] and everyone_leaves.spec_cost == 0.5
    assert nobody_leaves.exit_counts == [0, 96] and nobody_leaves.spec_cost == 1.0
    shallow_only = evaluate(model, batches, Cascade.of([2]))
    deep_only = evaluate(model, batches, Cascade.of([4]))
    assert everyone_leaves.nll_sum == pytest.approx(shallow_only.nll_sum, rel=1e-6)
    assert nobody_leaves.nll_sum == pytest.approx(deep_only.nll_sum, rel=1e-6)


@torch.no_grad()
def test_evaluate_one_exit_is_plain_evaluation():
    model, batches = setup(layers=2, seed=3)
    logits = torch.cat([model(batches.x[i]).reshape(-1, VOCAB) for i in range(3)])
    y = batches.y.reshape(-1)
    result = evaluate(model, batches, Cascade.of([2]))
    assert result.ppl == pytest.approx(math.exp(F.cross_entropy(logits, y).item()), rel=1e-5)
    assert result.correct == int((logits.argmax(-1) == y).sum())
    assert result.exit_counts == [96] and result.spec_cost == 1.0
    assert result.honest_cost == pytest.approx(1.0)


@torch.no_grad()
def test_evaluate_three_exits_equals_brute_force():
    model, batches = setup(layers=4, seed=4)
    layers = [1, 2, 4]
    per_exit = [[logits_at(model, batches.x[i], l).reshape(-1, VOCAB) for i in range(3)]
                for l in layers]
    conf = [torch.cat([lg.softmax(-1).max(-1).values for lg in per_exit[e]]) for e in (0, 1)]
    taus = [midpoint_threshold(conf[0], 0.6), midpoint_threshold(conf[1])]
    chosen_exit = route(conf, taus)
    logits = torch.stack([torch.cat(per_exit[e]) for e in range(3)])  # (exits, N, V)
    chosen = logits[chosen_exit, torch.arange(96)]
    y = batches.y.reshape(-1)
    result = evaluate(model, batches, Cascade.of(layers, taus))
    counts = torch.bincount(chosen_exit, minlength=3).tolist()
    assert result.exit_counts == counts and all(c > 0 for c in counts)
    assert result.nll_sum == pytest.approx(
        F.cross_entropy(chosen, y, reduction="sum").item(), rel=1e-5)
    assert result.correct == int((chosen.argmax(-1) == y).sum())
