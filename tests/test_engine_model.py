"""The early-exit model: shape of the network, growing, freezing, parameter counts."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ashem_engine.model import (Block, EarlyExitLM, FeedForward, RMSNorm, block_macs_per_token,
                                count_parameters, head_macs_per_token, rotary_tables,
                                rotate_half)
from ashem_engine.settings import ModelSettings
from engine_support import single_thread  # noqa: F401  (autouse fixture)

TINY = ModelSettings(dim=16, heads=2, ffn_hidden=32)
VOCAB = 50


def tiny_model(layers=2, seed=0, vocab=VOCAB, cfg=TINY) -> EarlyExitLM:
    torch.manual_seed(seed)
    return EarlyExitLM(vocab, layers, cfg)


def params_per_block(cfg: ModelSettings) -> int:
    # wq wk wv wo, w1 w2 w3, two RMSNorm scales; no biases
    return 4 * cfg.dim * cfg.dim + 3 * cfg.dim * cfg.ffn_hidden + 2 * cfg.dim


def same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)


# -- the network ---------------------------------------------------------------------------

def test_no_biases_and_untied_head():
    m = tiny_model(4)
    assert not [n for n, _ in m.named_parameters() if "bias" in n]
    assert m.head.weight.data_ptr() != m.embedding.weight.data_ptr()
    assert sum(p.numel() for p in m.parameters()) == 2 * VOCAB * 16 + 4 * params_per_block(TINY)


def test_forward_is_head_of_last_hidden_and_layers_compose():
    m = tiny_model(4)
    x = torch.randint(0, VOCAB, (3, 7))
    with torch.no_grad():
        logits = m(x)
        assert logits.shape == (3, 7, VOCAB)
        assert torch.allclose(logits, m.head(m.hidden(x)), atol=1e-6)
        h2 = m.hidden(x, stop=2)
        assert torch.allclose(m.run_layers(h2, 2, 4), m.hidden(x), atol=1e-6)
        assert torch.equal(m.hidden(x, stop=0), m.embedding(x))


def test_attention_is_causal():
    m = tiny_model(2)
    x = torch.randint(0, VOCAB, (2, 9))
    x2 = x.clone()
    x2[:, 5] = (x2[:, 5] + 1) % VOCAB
    with torch.no_grad():
        a, b = m(x), m(x2)
    assert torch.allclose(a[:, :5], b[:, :5], atol=1e-6)
    assert not torch.allclose(a[:, 5:], b[:, 5:], atol=1e-4)


def test_block_is_post_norm():
    # x = norm1(x + attn(x)); x = norm2(x + ffn(x)): with unit norm scales every output
    # vector has mean square 1 (a pre-norm block would not)
    torch.manual_seed(0)
    block = Block(TINY)
    out = block(torch.randn(2, 5, 16) * 3)
    assert torch.allclose(out.pow(2).mean(-1), torch.ones(2, 5), atol=1e-4)
    with torch.no_grad():
        block.norm2.weight.fill_(2.0)
    assert torch.allclose(block(torch.randn(2, 5, 16)).pow(2).mean(-1), torch.full((2, 5), 4.0),
                          atol=1e-3)


def test_rmsnorm_formula():
    norm = RMSNorm(4, eps=1e-6)
    x = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    expected = x / math.sqrt((1 + 4 + 9 + 16) / 4 + 1e-6)
    assert torch.allclose(norm(x), expected, atol=1e-6)


def test_gated_feed_forward():
    torch.manual_seed(0)
    ffn = FeedForward(TINY)
    x = torch.randn(3, 16)
    expected = (F.silu(x @ ffn.w1.weight.T) * (x @ ffn.w3.weight.T)) @ ffn.w2.weight.T
    assert torch.allclose(ffn(x), expected, atol=1e-6)


def test_rotate_half_and_rotary_are_relative():
    assert rotate_half(torch.tensor([1.0, 2.0, 3.0, 4.0])).tolist() == [-3.0, -4.0, 1.0, 2.0]
    cos, sin = rotary_tables(12, 8, 10000.0)
    assert cos.shape == sin.shape == (12, 8)
    assert torch.equal(cos[0], torch.ones(8)) and torch.equal(sin[0], torch.zeros(8))
    torch.manual_seed(0)
    q, k = torch.randn(8), torch.randn(8)

    def rope(v, pos):
        return v * cos[pos] + rotate_half(v) * sin[pos]

    # the score depends only on the distance between the positions
    base = torch.dot(rope(q, 5), rope(k, 2))
    for shift in (1, 3, 6):
        assert torch.allclose(torch.dot(rope(q, 5 + shift), rope(k, 2 + shift)), base, atol=1e-5)
    assert not torch.allclose(torch.dot(rope(q, 5), rope(k, 1)), base, atol=1e-3)


def test_initialisation_scales():
    torch.manual_seed(0)
    m = EarlyExitLM(20000, 1, ModelSettings())
    assert abs(m.head.weight.std().item() - 0.125) < 0.003
    assert abs(m.embedding.weight.std().item() - 0.02) < 0.0005
    assert abs(m.layers[0].ffn.w1.weight.std().item() - 0.125) < 0.005
    assert torch.equal(m.layers[0].norm1.weight, torch.ones(64))


def test_same_seed_same_model():
    a, b = tiny_model(seed=3), tiny_model(seed=3)
    for (na, pa), (nb, pb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert na == nb and same(pa, pb)


# -- growing and freezing ------------------------------------------------------------------

def test_grow_copies_everything_below_bit_for_bit():
    source = tiny_model(2, seed=1)
    with torch.no_grad():  # make the source distinguishable from any fresh init
        for p in source.parameters():
            p.add_(0.01 * torch.randn_like(p))
    before = {k: v.clone() for k, v in source.state_dict().items()}
    grown = source.grow(4)
    grown.freeze_lower(2)
    assert grown.num_layers == 4 and source.num_layers == 2
    assert same(grown.embedding.weight, source.embedding.weight)
    assert same(grown.head.weight, source.head.weight)
    for i in range(2):
        for (n1, p1), (n2, p2) in zip(grown.layers[i].state_dict().items(),
                                      source.layers[i].state_dict().items()):
            assert n1 == n2 and same(p1, p2)
    # copies, not shared storage: the source is untouched by training the grown model
    assert grown.head.weight.data_ptr() != source.head.weight.data_ptr()
    with torch.no_grad():
        grown.head.weight.add_(1.0)
    for k, v in source.state_dict().items():
        assert same(v, before[k]), k
    assert all(p.requires_grad for p in source.parameters())
    # new layers are fresh, not copies of the old ones
    assert not torch.equal(grown.layers[2].attn.wq.weight, grown.layers[0].attn.wq.weight)
    assert not torch.equal(grown.layers[2].attn.wq.weight, grown.layers[3].attn.wq.weight)
    assert abs(grown.layers[3].ffn.w1.weight.std().item() - TINY.linear_init_std) < 0.02
    # the first exit of the grown model computes what the source computed
    x = torch.randint(0, VOCAB, (2, 6))
    with torch.no_grad():
        assert torch.equal(grown.hidden(x, stop=2), source.hidden(x))


def test_freeze_lower_flags():
    grown = tiny_model(2).grow(4)
    assert all(p.requires_grad for p in grown.parameters())
    grown.freeze_lower(2)
    assert not grown.embedding.weight.requires_grad
    for i in range(2):
        assert not any(p.requires_grad for p in grown.layers[i].parameters())
    for i in range(2, 4):
        assert all(p.requires_grad for p in grown.layers[i].parameters())
    assert grown.head.weight.requires_grad
    grown.freeze_lower(2, freeze_head=True)
    assert not grown.head.weight.requires_grad
    assert all(p.requires_grad for p in grown.layers[3].parameters())


def test_frozen_parameters_get_no_gradient():
    grown = tiny_model(2).grow(3)
    grown.freeze_lower(2)
    x = torch.randint(0, VOCAB, (2, 5))
    F.cross_entropy(grown(x).reshape(-1, VOCAB), x.reshape(-1)).backward()
    assert grown.embedding.weight.grad is None
    assert all(p.grad is None for p in grown.layers[0].parameters())
    assert all(p.grad is not None for p in grown.layers[2].parameters())
    assert grown.head.weight.grad is not None


def test_grow_must_add_layers():
    m = tiny_model(2)
    for n in (1, 2):
        with pytest.raises(ValueError):
            m.grow(n)


def test_parameter_counts_of_the_spec_model():
    """SPEC_NOTES: 4,600,448 of 9,200,896 parameters trainable in stage 2."""
    cfg = ModelSettings()
    vocab = 69830
    torch.manual_seed(0)
    stage1 = EarlyExitLM(vocab, 2, cfg)
    per_block = params_per_block(cfg)
    assert per_block == 65664
    assert count_parameters(stage1) == (2 * vocab * 64 + 2 * per_block,) * 2
    grown = stage1.grow(4)
    grown.freeze_lower(2)
    trainable, total = count_parameters(grown)
    assert total == 2 * vocab * 64 + 4 * per_block == 9_200_896
    assert trainable == vocab * 64 + 2 * per_block == 4_600_448
    grown.freeze_lower(2, freeze_head=True)
    assert count_parameters(grown) == (2 * per_block, 9_200_896)


def test_tiny_parameter_counts_match_the_formula():
    grown = tiny_model(2, vocab=176).grow(4)
    grown.freeze_lower(2)
    # the tiny run's stage 2 (test_engine_run checks the event reports the same numbers)
    assert count_parameters(grown) == (176 * 16 + 2 * params_per_block(TINY),
                                       2 * 176 * 16 + 4 * params_per_block(TINY)) == (8000, 16000)


def test_macs_per_token():
    cfg = ModelSettings()
    # 4 projections, scores and values over (32 + 1) / 2 keys on average, gated FFN
    assert block_macs_per_token(cfg, 32) == 4 * 64 * 64 + 2 * 64 * 16.5 + 3 * 64 * 256 == 67648
    assert head_macs_per_token(cfg, 69830) == 4_469_120
