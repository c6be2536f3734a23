"""Honest cost, counted by hand on a tiny model: dim 16, ffn 32, sequence length 8, vocab 50.

A block: projections 4·16·16 = 1024, attention (scores and values) 2·16·(8+1)/2 = 144 over
a causal length-8 sequence, 2·16·(1+1)/2 = 32 over a length-1 one, feed-forward 3·16·32 =
1536; so 2704 at length 8 and 2592 at length 1. The head: 16·50 = 800. The plain 4-layer model: 4·2704 + 800 = 11616.
"""
from __future__ import annotations

import pytest

from ashem_engine.cascade import inference_modes
from ashem_engine.costs import CostModel
from ashem_engine.model import block_macs_per_token, head_macs_per_token
from ashem_engine.names import CLASSIFIER, PROPAGATED, SEQUENCE, SOFTMAX, TOKEN
from ashem_engine.settings import ModelSettings, StageSettings

CFG = ModelSettings(dim=16, heads=2, ffn_hidden=32)


def model(modes, signal=SOFTMAX, layers=(2, 4)):
    return CostModel(CFG, 50, 8, tuple(layers), tuple(modes), signal)


def test_unit_costs_by_hand():
    assert block_macs_per_token(CFG, 8) == 1024 + 144 + 1536 == 2704
    assert block_macs_per_token(CFG, 1) == 1024 + 32 + 1536 == 2592
    assert head_macs_per_token(CFG, 50) == 800
    assert model([SEQUENCE]).plain() == 11616


def test_spec_inference_softmax():
    c = model([SEQUENCE])
    # an exited token still runs the upper blocks: later deep tokens attend to them
    assert c.path(0) == 4 * 2704 + 800
    assert c.path(1) == 4 * 2704 + 2 * 800
    assert c.relative([0.7, 0.3]) == pytest.approx((0.7 * 11616 + 0.3 * 12416) / 11616)
    assert c.relative([0.0, 1.0]) > 1.0  # all deep: a head more than the plain model


def test_token_inference_softmax():
    c = model([TOKEN])
    assert c.path(0) == 2 * 2704 + 800  # leaves after two blocks and one head
    assert c.path(1) == 2 * 2704 + 2 * 2592 + 2 * 800  # upper blocks over one token
    assert c.relative([0.5, 0.5]) == pytest.approx((0.5 * 6208 + 0.5 * 12192) / 11616)


def test_propagated_inference_classifier():
    c = model([PROPAGATED], CLASSIFIER)
    # exited: two blocks, the classifier (16), its head; plus keys and values of its frozen
    # state in the two upper layers (2·16·16 each)
    assert c.path(0) == 2 * 2704 + 16 + 800 + 2 * 512
    assert c.path(1) == 4 * 2704 + 16 + 800  # no head at the first exit
    assert c.relative([1.0, 0.0]) < 1.0
    assert c.compute_everything() == 4 * 2704 + 2 * 800


def test_three_exits_count_every_signal_passed():
    c = CostModel(CFG, 50, 8, (2, 4, 6), (TOKEN, TOKEN), SOFTMAX)
    assert c.plain() == 6 * 2704 + 800
    assert c.path(0) == 2 * 2704 + 800
    assert c.path(1) == 2 * 2704 + 2 * 2592 + 2 * 800
    assert c.path(2) == 2 * 2704 + 4 * 2592 + 3 * 800
    assert c.absolute([0.5, 0.25, 0.25]) == pytest.approx(
        0.5 * c.path(0) + 0.25 * c.path(1) + 0.25 * c.path(2))


def test_single_exit_is_the_plain_model():
    assert CostModel(CFG, 50, 8, (4,), ()).relative([1.0]) == 1.0


def test_spec_setup_costs_more_than_the_plain_model():
    """SPEC_NOTES weakness 4: at 70 % shallow the two-stage model costs more than 4 layers."""
    c = CostModel(ModelSettings(), 69830, 32, (2, 4), (SEQUENCE,))
    assert c.relative([0.704, 0.296]) > 1.0
    assert c.head / block_macs_per_token(ModelSettings(), 32) > 60


def test_inference_modes_follow_the_setting():
    stages = (StageSettings(layers=2, lr=1e-3),
              StageSettings(layers=4, lr=1e-4, hard_ratio=0.5, context="token"),
              StageSettings(layers=6, lr=1e-4, hard_ratio=0.5, context="sequence"))
    assert inference_modes(stages, "spec") == (SEQUENCE, SEQUENCE)
    assert inference_modes(stages, "as_trained") == (TOKEN, PROPAGATED)
