"""The output head, where the time goes.

A spec batch's logits (2,048 tokens × 69,830 words) are 572 MB, and every pass over them
costs ~80 ms on the target machine. Here the logits only ever exist a chunk of tokens at a
time (small enough to stay in cache): the loss, its gradients, and the per-token exit
statistics (NLL, confidence = max softmax probability, correctness) are computed from each
chunk in place, equal to `F.cross_entropy(h @ W.T, y)` and its gradients up to rounding.
Inside a bf16 run (precision.py) products, logits and exponentials are bf16, sums and every
figure float32, with no max-shift pass unless a row overflows (`_bf16_chunk`).

Whole rows of a chunk (128 × 69,830 logits, 35 MB in fp32) outgrow a core's L2 and stream
through L3 and memory, which a neighbour shares. `Tiles` with a `words` count also split the
vocabulary (tiled.py): each block's logits stay in L2, a row's sum of exponentials is built
across blocks, and the gradients take a second pass once it is known. Which is faster depends
on the machine: tile_probe.py measures it, and a run uses what `tiles_in_use` says."""
from __future__ import annotations

import threading
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from . import tiled
from .precision import low_precision


def default_chunk(device: torch.device) -> int:
    """Tokens per chunk of whole rows (measured best on 2026-11 hosts: 128, fp32 and bf16)."""
    return 8192 if device.type == "cuda" else 128


@dataclass(frozen=True)
class Tiles:
    """A block of the head's logits: `tokens` rows by `words` columns (0: whole rows)."""

    tokens: int
    words: int = 0

    def whole_rows(self, vocab: int) -> bool:
        return self.words == 0 or self.words >= vocab

    def __str__(self) -> str:
        return f"{self.tokens}x{self.words}" if self.words else f"{self.tokens}xall"

    @staticmethod
    def parse(text: str) -> "Tiles":
        """"256x2048" or "128xall"; ValueError otherwise."""
        tokens, sep, words = text.strip().lower().partition("x")
        if not sep or not tokens.isdigit() or not (words.isdigit() or words == "all") \
                or int(tokens) < 1 or (words != "all" and int(words) < 1):
            raise ValueError(text)
        return Tiles(int(tokens), 0 if words == "all" else int(words))


@dataclass(frozen=True)
class HeadTiles:
    """The tiles of a training step (loss and gradients) and of a statistics pass, measured
    at `tokens` a call (0: for any size); `smaller`: those for calls nearer its size (later
    stages' batches of hard tokens are 32× smaller than stage 1's)."""

    step: Tiles
    stats: Tiles
    tokens: int = 0
    smaller: "HeadTiles | None" = None

    def for_tokens(self, n: int) -> "HeadTiles":
        if self.smaller is not None and n * n < self.tokens * self.smaller.tokens:
            return self.smaller.for_tokens(n)  # nearer in a log scale
        return self

    def describe(self) -> dict:
        out = {"step": str(self.step), "stats": str(self.stats)}
        if self.smaller is not None:
            out.update(tokens=self.tokens, smaller={**self.smaller.describe(),
                                                    "tokens": self.smaller.tokens})
        return out


_in_use = threading.local()  # a run's HeadTiles, in the thread that runs its steps


@contextmanager
def tiles_in_use(tiles: "HeadTiles | None"):
    """Every head call in this thread uses `tiles` (None: whole rows, `default_chunk`)."""
    before = getattr(_in_use, "tiles", None)
    _in_use.tiles = tiles
    try:
        yield
    finally:
        _in_use.tiles = before


def _tiles(kind: str, chunk: "int | None", n: int, device: torch.device) -> Tiles:
    if chunk:
        return Tiles(chunk)
    tiles = getattr(_in_use, "tiles", None)
    return Tiles(default_chunk(device)) if tiles is None else getattr(tiles.for_tokens(n), kind)


class _FusedHeadLoss(torch.autograd.Function):
    """Mean cross-entropy of `h @ weight.T` against `targets`, gradients made in forward."""

    @staticmethod
    def forward(ctx, h, weight, targets, chunk, low):  # noqa: D401 - autograd signature
        n, dtype = h.shape[0], torch.bfloat16 if low else h.dtype
        want_h, want_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        hx, wx = h.to(dtype), weight.to(dtype)  # in fp32: the very tensors, no copy
        grad_h = torch.empty_like(hx) if want_h else None
        grad_w = torch.empty_like(wx) if want_w else None
        total = torch.zeros((), dtype=torch.float64, device=h.device)
        buf = torch.empty(min(chunk, n), weight.shape[0], dtype=dtype, device=h.device)
        for start in range(0, n, chunk):
            stop = min(start + chunk, n)
            hc, yc, logits = hx[start:stop], targets[start:stop], buf[: stop - start]
            sums, nll = (_bf16_chunk if low else _fp32_chunk)(hc, wx, yc, logits)
            total += nll.sum(dtype=torch.float64)
            if want_h or want_w:
                gradients = _bf16_gradients if low else _fp32_gradients
                gradients(logits, sums, hc, wx, yc, n, grad_h[start:stop] if want_h else None,
                          grad_w if want_w else None, start == 0)
        ctx.grads = (None if grad_h is None else grad_h.to(h.dtype),
                     None if grad_w is None else grad_w.to(weight.dtype))
        return (total / n).to(h.dtype)

    @staticmethod
    def backward(ctx, grad_out):
        grad_h, grad_w = ctx.grads
        ctx.grads = None
        if grad_out.device.type == "cpu" and grad_out.item() == 1.0:
            return grad_h, grad_w, None, None, None  # the usual case: skip two full-size copies
        return (grad_h * grad_out if grad_h is not None else None,
                grad_w * grad_out if grad_w is not None else None, None, None, None)


def _fp32_gradients(p, sums, hc, wx, yc, n, grad_h, grad_w, first: bool) -> None:
    """One chunk's share of both gradients from its exponentials p: d loss / d logits =
    (softmax - onehot) / n, built in p's buffer."""
    p.mul_(sums.reciprocal_().mul_(1.0 / n))
    p[torch.arange(p.shape[0], device=p.device), yc] -= 1.0 / n
    if grad_h is not None:
        torch.mm(p, wx, out=grad_h)
    if grad_w is not None and first:
        torch.mm(p.t(), hc, out=grad_w)  # no zero-fill of a 18 MB tensor
    elif grad_w is not None:
        grad_w.addmm_(p.t(), hc)


def _bf16_gradients(p, sums, hc, wx, yc, n, grad_h, grad_w, first: bool) -> None:
    """The same from bf16 exponentials, without a pass over them: the softmax scale 1 / (n *
    sum) multiplies the small side of each product (p @ W's rows, h's rows), and the onehot
    term is W's and h's target rows. Scale and subtraction in float32."""
    scale = sums.reciprocal() / n
    if grad_h is not None:
        grad_h.copy_(torch.mm(p, wx).float().mul_(scale).sub_(wx[yc].float(), alpha=1.0 / n))
    if grad_w is not None:
        scaled = (hc.float() * scale).to(p.dtype)
        if first:
            torch.mm(p.t(), scaled, out=grad_w)
        else:
            grad_w.addmm_(p.t(), scaled)
        grad_w.index_add_(0, yc, hc, alpha=-1.0 / n)


def head_loss(h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
              chunk: int | None = None, tiles: Tiles | None = None) -> torch.Tensor:
    """Mean cross-entropy over tokens; h is (N, dim), targets (N,). `chunk`: whole rows of
    that many tokens; `tiles`: these; neither: the run's (`tiles_in_use`)."""
    tiles = tiles or _tiles("step", chunk, h.shape[0], h.device)
    low = low_precision(h.device)
    if not tiles.whole_rows(weight.shape[0]):
        return _TiledHeadLoss.apply(h.contiguous(), weight, targets.reshape(-1), tiles, low)
    return _FusedHeadLoss.apply(h.contiguous(), weight, targets.reshape(-1), tiles.tokens, low)


class _TiledHeadLoss(torch.autograd.Function):
    """`_FusedHeadLoss` over tiles of tokens and words (tiled.py)."""

    @staticmethod
    def forward(ctx, h, weight, targets, tiles, low):  # noqa: D401 - autograd signature
        nll, grad_h, grad_w = tiled.loss_and_gradients(h, weight, targets, tiles, low,
                                                       *ctx.needs_input_grad[:2])
        ctx.grads = (grad_h, grad_w)
        return nll.sum(dtype=torch.float64).div(h.shape[0]).to(h.dtype)

    backward = staticmethod(_FusedHeadLoss.backward)


def _fp32_chunk(hc, wx, yc, logits) -> tuple[torch.Tensor, torch.Tensor]:
    """One chunk's exp(logit - row maximum) in `logits`, their row sums and the NLL."""
    torch.mm(hc, wx.t(), out=logits)
    top = logits.amax(dim=1, keepdim=True)
    target_logit = logits.gather(1, yc[:, None])
    logits.sub_(top).exp_()
    sums = logits.sum(dim=1, keepdim=True)
    return sums, sums.log() + top - target_logit


def _bf16_chunk(hc, wx, yc, logits, probs=None) -> tuple[torch.Tensor, torch.Tensor]:
    """One chunk's bf16 logits and their exponentials exp(logit - shift): in place in bf16
    (training: their sums are rounded to bf16 after a float32 accumulation), or in float32
    `probs` (statistics: float32 sums, so confidences keep float32 resolution and do not tie
    at a quantile). Returns the row sums and the NLL per token, float32. The shift is 0,
    unless exp overflows or underflows a row (then each row's maximum, for this chunk)."""
    torch.mm(hc, wx.t(), out=logits)
    target_logit = logits.gather(1, yc[:, None]).float()
    out = logits if probs is None else probs
    sums = torch.exp(logits, out=out).sum(dim=1, keepdim=True).float()
    if bool(torch.isfinite(sums).all()) and bool((sums > 0).all()):
        return sums, sums.log() - target_logit
    if probs is None:  # the exponentials took the logits' place: make them again
        torch.mm(hc, wx.t(), out=logits)
    top = logits.amax(dim=1, keepdim=True)
    sums = torch.exp(logits.float() - top.float(), out=out).sum(dim=1, keepdim=True).float()
    return sums, sums.log() + top.float() - target_logit


@dataclass
class ExitStats:
    """Per-token statistics of one exit: (N,) tensors."""

    nll: torch.Tensor  # float32, -log p(target)
    confidence: torch.Tensor  # float32, max softmax probability
    correct: torch.Tensor  # bool, argmax == target

    def __len__(self) -> int:
        return self.nll.shape[0]

    def __getitem__(self, rows) -> "ExitStats":  # some tokens: an index, a mask or a slice
        return self.apply(lambda t: t[rows])

    def apply(self, fn) -> "ExitStats":
        """`fn` of each per-token tensor (a selection, a gather across ranks, ...)."""
        return ExitStats(fn(self.nll), fn(self.confidence), fn(self.correct))

    @staticmethod
    def cat(parts: list) -> "ExitStats":
        return ExitStats(*(torch.cat(t) for t in zip(*((p.nll, p.confidence, p.correct)
                                                        for p in parts))))


@torch.no_grad()
def exit_stats(h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
               chunk: int | None = None, tiles: Tiles | None = None) -> ExitStats:
    """NLL, confidence and correctness per token, without ever holding all the logits."""
    h = h.reshape(-1, h.shape[-1]).contiguous()
    targets = targets.reshape(-1)
    tiles = tiles or _tiles("stats", chunk, h.shape[0], h.device)
    if not tiles.whole_rows(weight.shape[0]):
        return ExitStats(*tiled.statistics(h, weight, targets, tiles, low_precision(h.device)))
    n, chunk = h.shape[0], tiles.tokens
    if low_precision(h.device):
        return _bf16_exit_stats(h, weight, targets, chunk)
    nll = torch.empty(n, dtype=torch.float32, device=h.device)
    confidence = torch.empty(n, dtype=torch.float32, device=h.device)
    correct = torch.empty(n, dtype=torch.bool, device=h.device)
    buf = torch.empty(min(chunk, n), weight.shape[0], dtype=h.dtype, device=h.device)
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        hc, yc, logits = h[start:stop], targets[start:stop], buf[: stop - start]
        torch.mm(hc, weight.t(), out=logits)
        top, best = logits.max(dim=1, keepdim=True)
        target_logit = logits.gather(1, yc[:, None])
        sums = logits.sub_(top).exp_().sum(dim=1, keepdim=True)
        nll[start:stop] = (sums.log() + top - target_logit).squeeze(1)
        confidence[start:stop] = sums.reciprocal().squeeze(1)
        correct[start:stop] = best.squeeze(1) == yc
    return ExitStats(nll, confidence, correct)


def _bf16_exit_stats(h, weight, targets, chunk) -> ExitStats:
    n, hx, wx = h.shape[0], h.to(torch.bfloat16), weight.to(torch.bfloat16)
    out = ExitStats(torch.empty(n, device=h.device), torch.empty(n, device=h.device),
                    torch.empty(n, dtype=torch.bool, device=h.device))
    logits = torch.empty(min(chunk, n), weight.shape[0], dtype=torch.bfloat16, device=h.device)
    probs = torch.empty(logits.shape, dtype=torch.float32, device=h.device)
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        yc, p = targets[start:stop], probs[: stop - start]
        sums, nll = _bf16_chunk(hx[start:stop], wx, yc, logits[: stop - start], p)
        top = p.amax(dim=1, keepdim=True)  # the largest exp(logit - shift)
        out.nll[start:stop] = nll.squeeze(1)
        out.confidence[start:stop] = (top / sums).squeeze(1)
        out.correct[start:stop] = first_best_is_target(p, top, yc)
    return out


def first_best_is_target(p: torch.Tensor, top: torch.Tensor, yc: torch.Tensor) -> torch.Tensor:
    """argmax(p) == target, as argmax breaks ties (the first index), at the cost of a max
    (an argmax is 5x a max here): only rows whose target reaches the top need argmax."""
    tied = p.gather(1, yc[:, None]).squeeze(1) == top.squeeze(1)
    rows = tied.nonzero().squeeze(1)
    tied[rows] = p[rows].argmax(dim=1) == yc[rows]
    return tied
