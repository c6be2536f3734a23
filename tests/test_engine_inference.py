"""The real early exit computes only what the decision needs, and gives the same exits,
hidden states, logits and NLLs as computing everything (both are cascade.route)."""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from ashem_engine.cascade import Cascade, ExitPass, route, sparse_block
from ashem_engine.head import exit_stats
from ashem_engine.model import EarlyExitLM
from ashem_engine.names import PROPAGATED, SEQUENCE, TOKEN
from ashem_engine.settings import ModelSettings
from ashem_engine.signals import train_exit_classifier
from engine_support import single_thread  # noqa: F401  (autouse fixture)

CFG = ModelSettings(dim=16, heads=2, ffn_hidden=32)
VOCAB = 50


def setup(layers: int, seed: int = 0):
    torch.manual_seed(seed)
    model = EarlyExitLM(VOCAB, layers, CFG).eval()
    x = torch.randint(0, VOCAB, (6, 8))
    y = torch.randint(0, VOCAB, (6, 8))
    return model, x, y


def median_thresholds(model, x, y, exits, classifier=None):
    h = model.hidden(x, stop=exits[0]).reshape(-1, CFG.dim)
    conf = exit_stats(h, model.head.weight, y).confidence
    scores = conf if classifier is None else classifier.score(h)
    return [float(scores.median())] + [0.03] * (len(exits) - 2), h, conf


@pytest.mark.parametrize("mode", [TOKEN, PROPAGATED, SEQUENCE])
@pytest.mark.parametrize("signal", ["softmax", "classifier"])
def test_real_exit_equals_compute_everything(mode, signal):
    model, x, y = setup(4)
    classifiers = None
    if signal == "classifier":
        h = model.hidden(x, stop=2).reshape(-1, CFG.dim)
        conf = exit_stats(h, model.head.weight, y).confidence
        classifiers = [train_exit_classifier(h, conf, steps=50)]
    thresholds, _, _ = median_thresholds(model, x, y, [2, 4],
                                         classifiers[0] if classifiers else None)
    cascade = Cascade.of([2, 4], thresholds, (mode,), classifiers)
    full = route(model, cascade, x, y)
    real = route(model, cascade, x, y, only_needed=True)
    assert torch.equal(full.exit_index, real.exit_index)
    counts = torch.bincount(real.exit_index, minlength=2)
    assert counts.min() > 0  # both exits are used: the comparison is not vacuous
    torch.testing.assert_close(real.hidden, full.hidden, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(model.head(real.hidden), model.head(full.hidden),
                               atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(real.nll, full.nll, atol=1e-5, rtol=1e-5)
    assert torch.equal(real.correct, full.correct)


@pytest.mark.parametrize("mode", [TOKEN, PROPAGATED, SEQUENCE])
def test_real_exit_equals_compute_everything_three_exits(mode):
    model, x, y = setup(6, seed=3)
    h2 = model.hidden(x, stop=2).reshape(-1, CFG.dim)
    c2 = exit_stats(h2, model.head.weight, y).confidence
    c4 = exit_stats(model.hidden(x, stop=4).reshape(-1, CFG.dim), model.head.weight,
                    y).confidence
    thresholds = [float(c2.quantile(0.6)), float(c4.quantile(0.5))]
    cascade = Cascade.of([2, 4, 6], thresholds, (mode, mode))
    full = route(model, cascade, x, y)
    real = route(model, cascade, x, y, only_needed=True)
    assert torch.equal(full.exit_index, real.exit_index)
    assert torch.bincount(real.exit_index, minlength=3).min() > 0
    torch.testing.assert_close(real.hidden, full.hidden, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(real.nll, full.nll, atol=1e-5, rtol=1e-5)


def test_token_mode_is_not_sequence_mode():
    """Upper layers over single tokens differ from over sequences: the modes matter."""
    model, x, y = setup(4)
    thresholds, _, _ = median_thresholds(model, x, y, [2, 4])
    token = route(model, Cascade.of([2, 4], thresholds, (TOKEN,)), x, y, only_needed=True)
    sequence = route(model, Cascade.of([2, 4], thresholds, (SEQUENCE,)), x, y,
                     only_needed=True)
    deep = token.exit_index == 1
    assert not torch.allclose(token.hidden[deep], sequence.hidden[deep])


def test_sparse_block_all_active_is_the_block_and_none_active_changes_nothing():
    model, x, _ = setup(2)
    h = model.hidden(x, stop=1)
    block = model.layers[1]
    everyone = torch.ones(h.shape[:2], dtype=torch.bool)
    torch.testing.assert_close(sparse_block(block, h, everyone), block(h), atol=1e-5,
                               rtol=1e-5)
    assert torch.equal(sparse_block(block, h, ~everyone), h)


def test_propagated_exited_tokens_keep_their_state():
    model, x, y = setup(4)
    thresholds, h2, conf = median_thresholds(model, x, y, [2, 4])
    real = route(model, Cascade.of([2, 4], thresholds, (PROPAGATED,)), x, y, only_needed=True)
    left = real.exit_index == 0
    assert torch.equal(real.hidden[left], h2[left])


def test_every_exit_changes_the_work_not_the_result():
    model, x, y = setup(4)
    thresholds, h2, _ = median_thresholds(model, x, y, [2, 4])
    cascade = Cascade.of([2, 4], thresholds, (TOKEN,))
    a = route(model, cascade, x, y)
    b = route(model, cascade, x, y, every_exit=True)
    assert torch.equal(a.exit_index, b.exit_index)
    torch.testing.assert_close(a.nll, b.nll)
    assert [p.hidden.shape for p in b.every_exit] == [(48, CFG.dim)] * 2
    assert torch.equal(b.every_exit[0].hidden, h2)
    assert not a.every_exit


@pytest.mark.parametrize("mode", [TOKEN, PROPAGATED, SEQUENCE])
def test_a_known_first_exit_changes_the_work_not_the_result(mode):
    model, x, y = setup(4)
    thresholds, h2, _ = median_thresholds(model, x, y, [2, 4])
    cascade = Cascade.of([2, 4], thresholds, (mode,))
    first = ExitPass(h2, exit_stats(h2, model.head.weight, y))
    for only_needed in (False, True):
        a = route(model, cascade, x, y, only_needed=only_needed)
        b = route(model, cascade, x, y, first, only_needed=only_needed)
        assert torch.equal(a.exit_index, b.exit_index) and torch.equal(a.nll, b.nll)


def test_the_cascade_keeps_each_exit_with_its_threshold_mode_and_signal():
    cascade = Cascade.of([2, 4, 6], [0.3, 0.4], (TOKEN, PROPAGATED))
    assert cascade.layers == [2, 4, 6] and cascade.thresholds == [0.3, 0.4]
    assert cascade.modes == (TOKEN, PROPAGATED) and cascade.signal == "softmax"
    assert cascade.first(2) == Cascade.of([2, 4], [0.3], (TOKEN,))
    assert replace(cascade, thresholds=[0.1, 0.2]).thresholds == [0.1, 0.2]
    assert Cascade.of([2]).last == 0 and Cascade.of([2]).only_needed_is_exact
    for wrong in (lambda: Cascade.of([2, 4], [0.3, 0.4]),
                  lambda: replace(cascade, thresholds=[0.1])):
        with pytest.raises(ValueError):
            wrong()
    with pytest.raises(ValueError, match="unknown inference mode"):
        Cascade.of([2, 4], [0.3], ("sideways",))


def test_evaluate_takes_the_real_exit_where_it_is_the_same_arithmetic():
    """Under SEQUENCE with max-softmax the real early exit runs exactly the ops of computing
    everything, so validation and the final evaluation take it: bit for bit the same."""
    model, x, y = setup(6, seed=5)
    thresholds, _, _ = median_thresholds(model, x, y, [2, 4, 6])
    cascade = Cascade.of([2, 4, 6], thresholds)
    assert cascade.only_needed_is_exact
    assert not Cascade.of([2, 4], thresholds[:1], (TOKEN,)).only_needed_is_exact
    full, real = route(model, cascade, x, y), route(model, cascade, x, y, only_needed=True)
    assert torch.equal(full.exit_index, real.exit_index) and torch.equal(full.nll, real.nll)
    assert torch.equal(full.hidden, real.hidden)
