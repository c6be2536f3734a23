"""The fused output head: loss and gradients equal the plain computation, for any chunking."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ashem_engine.head import exit_stats, head_loss
from engine_support import single_thread  # noqa: F401  (autouse fixture)

N, DIM, VOCAB = 37, 8, 29


def inputs(seed=0, n=N):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(n, DIM, generator=g)
    w = torch.randn(VOCAB, DIM, generator=g) * 0.7
    y = torch.randint(0, VOCAB, (n,), generator=g)
    return h, w, y


def reference(h, w, y):
    h = h.clone().requires_grad_(True)
    w = w.clone().requires_grad_(True)
    loss = F.cross_entropy(h @ w.T, y)
    loss.backward()
    return loss.detach(), h.grad, w.grad


@pytest.mark.parametrize("chunk", [1, 5, 8, 36, 37, 64, None])
def test_loss_and_gradients_equal_cross_entropy(chunk):
    h0, w0, y = inputs()
    ref_loss, ref_gh, ref_gw = reference(h0, w0, y)
    h = h0.clone().requires_grad_(True)
    w = w0.clone().requires_grad_(True)
    loss = head_loss(h, w, y, chunk=chunk)
    assert loss.shape == ()
    loss.backward()
    assert torch.allclose(loss, ref_loss, atol=1e-5)
    assert torch.allclose(h.grad, ref_gh, atol=1e-5)
    assert torch.allclose(w.grad, ref_gw, atol=1e-5)


def test_gradient_scales_with_upstream_gradient():
    h0, w0, y = inputs(1)
    h = h0.clone().requires_grad_(True)
    w = w0.clone().requires_grad_(True)
    (3.0 * head_loss(h, w, y, chunk=10)).backward()
    _, ref_gh, ref_gw = reference(h0, w0, y)
    assert torch.allclose(h.grad, 3.0 * ref_gh, atol=1e-5)
    assert torch.allclose(w.grad, 3.0 * ref_gw, atol=1e-5)


def test_frozen_weight_gets_no_gradient():
    h0, w0, y = inputs(2)
    h = h0.clone().requires_grad_(True)
    loss = head_loss(h, w0, y, chunk=7)
    loss.backward()
    _, ref_gh, _ = reference(h0, w0, y)
    assert torch.allclose(h.grad, ref_gh, atol=1e-5)
    assert w0.grad is None


def test_gradient_flows_into_a_model_below():
    torch.manual_seed(0)
    lin = torch.nn.Linear(DIM, DIM, bias=False)
    h0, w0, y = inputs(3)
    w = w0.clone().requires_grad_(True)
    head_loss(lin(h0), w, y, chunk=6).backward()
    fused = lin.weight.grad.clone()
    lin.weight.grad = None
    F.cross_entropy(lin(h0) @ w0.T, y).backward()
    assert torch.allclose(fused, lin.weight.grad, atol=1e-5)


def test_large_logits_are_stable():
    h, w, y = inputs(4)
    loss = head_loss(h * 200, w, y, chunk=5)
    assert torch.isfinite(loss)
    assert torch.allclose(loss, F.cross_entropy((h * 200) @ w.T, y), rtol=1e-5)


@pytest.mark.parametrize("chunk", [1, 6, 37, 100, None])
def test_exit_stats_equal_brute_force(chunk):
    h, w, y = inputs(5)
    logits = h @ w.T
    probs = logits.softmax(-1)
    stats = exit_stats(h, w, y, chunk=chunk)
    assert len(stats) == N
    assert torch.allclose(stats.nll, F.cross_entropy(logits, y, reduction="none"), atol=1e-5)
    assert torch.allclose(stats.confidence, probs.max(-1).values, atol=1e-6)
    assert torch.equal(stats.correct, logits.argmax(-1) == y)
    assert stats.correct.dtype == torch.bool


def test_exit_stats_accepts_batched_shapes_and_empty_input():
    h, w, y = inputs(6, n=24)
    flat = exit_stats(h, w, y)
    shaped = exit_stats(h.reshape(4, 6, DIM), w, y.reshape(4, 6))
    assert torch.equal(flat.nll, shaped.nll) and torch.equal(flat.correct, shaped.correct)
    empty = exit_stats(h[:0], w, y[:0])
    assert len(empty) == 0
