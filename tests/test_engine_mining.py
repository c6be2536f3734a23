"""Hard-example mining: per-token confidence, quantile threshold and filter, reporting."""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from ashem_engine.cascade import Cascade
from ashem_engine.data import Batches, Vocabulary
from ashem_engine.head import ExitStats
from ashem_engine.mining import (ExitPass, MiningPool, examples_in_context, exit_pass,
                                 fitted_histogram, hard_mask, histogram, mine,
                                 quantile_threshold, top_words)
from ashem_engine.mining import reaching as reaching_exit
from ashem_engine.model import EarlyExitLM
from ashem_engine.settings import ModelSettings
from engine_support import single_thread  # noqa: F401  (autouse fixture)

CFG = ModelSettings(dim=16, heads=2, ffn_hidden=32)
VOCAB = 40


def pooled(passed: ExitPass) -> MiningPool:
    """A pass's mining pool in one process (nothing to gather)."""
    return MiningPool(passed, passed.stats.confidence, reaching_exit(passed),
                      passed.stats.nll)


def hand_pass(confidences: torch.Tensor, dim: int = 3) -> tuple[ExitPass, torch.Tensor]:
    n = confidences.numel()
    hidden = torch.arange(n * dim, dtype=torch.float32).reshape(n, dim)
    stats = ExitStats(nll=-confidences.reshape(-1).log(), confidence=confidences.reshape(-1),
                      correct=torch.zeros(n, dtype=torch.bool))
    targets = (torch.arange(n) * 7 % 11).reshape(confidences.shape)
    return ExitPass(hidden, stats), targets


def test_threshold_is_torch_quantile_of_flattened_confidences():
    g = torch.Generator().manual_seed(0)
    conf = torch.rand(5, 4, 6, generator=g)
    for ratio in (0.1, 0.5, 0.73):
        expected = torch.quantile(conf.reshape(-1), ratio).item()
        assert quantile_threshold(conf, ratio) == expected
    # interpolation between the middle values, as torch.quantile does
    assert quantile_threshold(torch.tensor([0.1, 0.2, 0.3, 0.4]), 0.5) == \
        torch.tensor(0.25).item()


def test_mine_marks_exactly_the_tokens_below_threshold():
    conf = torch.tensor([[0.30, 0.05, 0.90, 0.30],
                         [0.20, 0.60, 0.30, 0.10]])
    passed, targets = hand_pass(conf)
    result = mine(pooled(passed), targets, ratio=0.5, exit_layer=2)
    threshold = torch.quantile(conf.reshape(-1), 0.5).item()
    assert result.threshold == threshold == torch.tensor(0.3).item()
    expected = [i for i, c in enumerate(conf.reshape(-1).tolist()) if c < threshold]
    assert result.hard.positions.tolist() == expected == [1, 4, 7]  # 0.3 itself is not hard
    assert torch.equal(result.hard.hidden, passed.hidden[expected])
    assert torch.equal(result.hard.targets, targets.reshape(-1)[expected])
    assert torch.equal(result.hard.confidences, conf.reshape(-1)[expected])
    assert result.total == 8 and result.exit_layer == 2 and len(result.hard) == 3
    assert torch.equal(hard_mask(conf.reshape(-1), threshold),
                       conf.reshape(-1) < threshold)


def test_half_of_distinct_confidences_are_hard():
    n = 500
    conf = torch.randperm(2 * n).float() / (2 * n) + 1e-4  # 2N distinct values
    passed, targets = hand_pass(conf.reshape(10, 100))
    result = mine(pooled(passed), targets, ratio=0.5, exit_layer=2)
    assert len(result.hard) == n
    assert result.hard.confidences.max() < result.threshold
    kept = torch.ones(2 * n, dtype=torch.bool)
    kept[result.hard.positions] = False
    assert conf[kept].min() >= result.threshold


def test_per_token_filter_differs_from_a_per_sequence_filter():
    """A confident sequence can hide a very unsure token; a noisy-but-average sequence can
    hold tokens that are fine. Only the per-token rule finds the right ones."""
    conf = torch.tensor([[0.95, 0.01, 0.95, 0.95],  # mean 0.715: confident row, one hard token
                         [0.40, 0.45, 0.50, 0.55]])  # mean 0.475
    passed, targets = hand_pass(conf)
    per_token = set(mine(pooled(passed), targets, 0.5, 2).hard.positions.tolist())
    assert per_token == {1, 4, 5, 6}
    row_mean = conf.mean(1)
    row_threshold = torch.quantile(row_mean, 0.5)
    per_sequence = {r * 4 + c for r in range(2) if row_mean[r] < row_threshold for c in range(4)}
    assert per_sequence == {4, 5, 6, 7}
    assert per_sequence != per_token
    assert 1 in per_token and 1 not in per_sequence


def tiny_batches(seed=0, n=3, b=4, t=6):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, VOCAB, (n, b, t), generator=g)
    y = torch.randint(0, VOCAB, (n, b, t), generator=g)
    return Batches(x, y)


def test_exit_pass_equals_softmax_of_full_logits():
    torch.manual_seed(0)
    model = EarlyExitLM(VOCAB, 2, CFG).eval()
    batches = tiny_batches()
    checked = []
    passed = exit_pass(model, batches, Cascade.of([2]), check=lambda: checked.append(1))
    assert checked == [1, 1, 1]  # once before each batch
    with torch.no_grad():
        logits = torch.cat([model(batches.x[i]).reshape(-1, VOCAB) for i in range(3)])
        shallow = torch.cat([model.head(model.hidden(batches.x[i], stop=1)).reshape(-1, VOCAB)
                             for i in range(3)])
    y = batches.y.reshape(-1)
    assert passed.hidden.shape == (3 * 4 * 6, 16)
    assert torch.allclose(passed.stats.confidence, logits.softmax(-1).max(-1).values, atol=1e-5)
    assert torch.allclose(passed.stats.nll, F.cross_entropy(logits, y, reduction="none"),
                          atol=1e-5)
    assert torch.equal(passed.stats.correct, logits.argmax(-1) == y)
    first = exit_pass(model, batches, Cascade.of([1]))
    assert torch.allclose(first.stats.confidence, shallow.softmax(-1).max(-1).values, atol=1e-5)


def test_mined_hidden_states_are_those_of_the_exit_layer():
    torch.manual_seed(0)
    model = EarlyExitLM(VOCAB, 2, CFG).eval()
    batches = tiny_batches(1)
    result = mine(pooled(exit_pass(model, batches, Cascade.of([2]))), batches.y, 0.5, 2)
    with torch.no_grad():
        all_hidden = torch.cat([model.hidden(batches.x[i]).reshape(-1, 16) for i in range(3)])
    assert len(result.hard) == 36  # 72 tokens, distinct confidences
    assert torch.allclose(result.hard.hidden, all_hidden[result.hard.positions], atol=1e-6)
    assert torch.equal(result.hard.targets, batches.y.reshape(-1)[result.hard.positions])


def test_histogram():
    conf = torch.tensor([0.0, 0.05, 0.1, 0.49, 0.5, 0.99, 1.0])
    edges, counts = histogram(conf, 4)
    assert edges == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert sum(counts) == len(conf)
    assert counts == [3, 1, 1, 2]  # the last bin includes 1.0


def test_fitted_histogram_spans_the_confidences_and_the_threshold():
    # a weak model: every confidence far below 1/50, all in the first bin on [0, 1]
    conf = torch.linspace(1e-4, 9e-3, 1000)
    assert histogram(conf, 50)[1][0] == 1000
    edges, counts = fitted_histogram(conf, 50, threshold=0.004, tail=0.0)
    assert len(edges) == 51 and len(counts) == 50
    assert edges[0] == pytest.approx(1e-4) and edges[-1] == pytest.approx(9e-3)
    assert sum(counts) == 1000 and max(counts) <= 25  # spread over the bins
    # the threshold outside the confidences widens the range; a tail is left out
    edges, counts = fitted_histogram(conf, 10, threshold=0.02)
    assert edges[-1] == pytest.approx(0.02) and edges[0] > 1e-4
    assert sum(counts) < 1000
    # all the same: a small range around them
    edges, counts = fitted_histogram(torch.full((5,), 0.3), 4, threshold=0.3)
    assert edges[0] < 0.3 < edges[-1] and sum(counts) == 5


def test_top_words():
    vocab = Vocabulary(["<unk>", "<pad>", "the", "cat", "dog"])
    assert top_words(torch.tensor([3, 2, 3, 4, 3, 2]), vocab, 2) == [["cat", 3], ["the", 2]]
    assert top_words(torch.tensor([3]), vocab, 0) == []


def test_examples_in_context_show_the_words_before_the_target():
    vocab = Vocabulary(["<unk>", "<pad>"] + [f"w{i}" for i in range(20)])
    stream = list(range(2, 22)) * 3
    from ashem_engine.data import make_batches
    batches = make_batches(stream, batch_size=2, seq_len=5)
    conf = torch.linspace(0.01, 0.99, batches.tokens)
    passed, _ = hand_pass(conf)
    result = mine(pooled(passed), batches.y, 0.5, 2)
    examples = examples_in_context(result.hard, batches, vocab, k=4, window=3)
    assert 1 <= len(examples) <= 4
    flat_x, flat_y = batches.x.reshape(-1), batches.y.reshape(-1)
    for ex in examples:
        pos = next(int(p) for p, c in zip(result.hard.positions, result.hard.confidences)
                   if round(float(c), 6) == ex["confidence"])
        assert ex["target"] == vocab.words[int(flat_y[pos])]
        assert ex["context"][-1] == vocab.words[int(flat_x[pos])]
        assert 1 <= len(ex["context"]) <= 3
    assert examples_in_context(result.hard, batches, vocab, k=0) == []


def test_later_exit_mines_only_among_the_tokens_that_reach_it():
    conf = torch.tensor([0.9, 0.1, 0.8, 0.2, 0.7, 0.3, 0.6, 0.4])
    reaching = torch.tensor([True, True, False, True, False, True, True, False])
    passed, targets = hand_pass(conf)
    result = mine(pooled(replace(passed, remaining=reaching)), targets, 0.5, exit_layer=4)
    population = conf[reaching]  # 0.9 0.1 0.2 0.3 0.6
    assert result.threshold == torch.quantile(population, 0.5).item()
    assert result.total == 5 and torch.equal(result.confidences, population)
    assert result.hard.positions.tolist() == [1, 3]  # 0.1, 0.2; never a token that left
    everyone = mine(pooled(passed), targets, 0.5, exit_layer=2)
    assert everyone.total == 8 and everyone.hard.positions.tolist() == [1, 3, 5, 7]
