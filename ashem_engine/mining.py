"""Hard-example mining: per-token confidence, the quantile threshold, the hard tokens.

Threshold and filtering are both per token (the spec's "critical" rule): the threshold is the
target-ratio quantile of the mining split's token confidences (`torch.quantile`'s, exact at
any size), and a token is hard when its own confidence is strictly below it."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Callable, Optional

import math

import torch

from .cascade import Cascade, ExitPass, route
from .data import Batches, Vocabulary
from .dist import World
from .head import ExitStats
from .model import EarlyExitLM


@dataclass
class HardTokens:
    """K tokens of a split: every process knows their targets, confidences and positions, and
    holds the hidden states of those in `here` (its share of the split; all K in one process)."""

    hidden: torch.Tensor  # (len(here), dim) hidden state at the exit layer
    targets: torch.Tensor  # (K,)
    confidences: torch.Tensor  # (K,)
    positions: torch.Tensor  # (K,) flat index into the split's tokens (batch-major)
    here: Optional[range] = None  # which of the K `hidden` holds; None: all

    def __post_init__(self) -> None:
        if self.here is None:
            self.here = range(len(self))

    def __len__(self) -> int:
        return self.targets.shape[0]


@dataclass
class MiningResult:
    exit_layer: int
    threshold: float
    total: int
    hard: HardTokens
    confidences: torch.Tensor  # every token's confidence, for the histogram
    reached: torch.Tensor  # (total,) flat positions of the tokens at this exit, hard or not


@torch.no_grad()
def exit_pass(model: EarlyExitLM, batches: Batches, cascade: Cascade,
              check: Callable[[], None] = lambda: None, rows: Optional[slice] = None
              ) -> ExitPass:
    """A split's tokens at the cascade's last exit, computing everything; `remaining`: those the
    earlier exits did not let go (None with one exit). Under torchrun this rank's share: its
    batches (tokens from ExitPass.offset on), or `rows` of every batch. `check()`: per batch."""
    world = World.current()
    if rows is None:
        mine, rows = world.each_of_mine(len(batches), check), slice(None)
        offset = world.share(len(batches)).start * batches.y[0].numel()
    else:
        mine, offset = World().each_of_mine(len(batches), check), 0  # every batch, here
    passes, remaining = [], []
    for i in mine:
        routed = route(model, cascade, *batches.batch(i, rows), every_exit=True)
        passes.append(routed.every_exit[-1])
        remaining.append(routed.exit_index == cascade.last)
    return ExitPass(torch.cat([p.hidden for p in passes]),
                    ExitStats.cat([p.stats for p in passes]),
                    torch.cat(remaining) if cascade.last else None, offset)


@dataclass
class MiningPool:
    """What mining at any ratio needs, so that steering computes nothing collective: this
    process' exit pass, and every token's confidence, arrival and NLL there, in batch order."""

    passed: ExitPass
    confidences: torch.Tensor
    remaining: torch.Tensor
    nll: torch.Tensor


def pool(passed: ExitPass, batches: Batches) -> MiningPool:
    world = World.current()

    def every(t: torch.Tensor) -> torch.Tensor:
        return world.gather_tokens(t, batches)
    return MiningPool(passed, every(passed.stats.confidence), every(reaching(passed)),
                      every(passed.stats.nll))


def quantile_threshold(confidences: torch.Tensor, ratio: float) -> float:
    return float(quantile(confidences, ratio))


def quantile(values: torch.Tensor, q: float) -> torch.Tensor:
    """torch.quantile(values, q) (linear interpolation), bit for bit, at any size:
    torch.quantile refuses more than 2**24 values. Sorted as torch.quantile sorts (a
    selection such as kthvalue degrades to quadratic time on ordered input)."""
    flat = values.reshape(-1).float()
    n = flat.numel()
    if n == 0:
        return torch.tensor(math.nan)
    rank = torch.tensor(q, dtype=flat.dtype) * (n - 1)  # as torch.quantile: in the values' dtype
    below = int(rank)
    ordered = flat.sort().values
    low, high = ordered[below], ordered[min(below + 1, n - 1)]
    return torch.lerp(low, high, (rank - below).to(flat.device))


def hard_mask(confidences: torch.Tensor, threshold: float) -> torch.Tensor:
    return confidences < threshold


def mine(mined_from: MiningPool, targets: torch.Tensor, ratio: float, exit_layer: int
         ) -> MiningResult:
    """Threshold = the `ratio` quantile of the confidences of the tokens still in the cascade here
    (all at the first exit: the spec's rule); hard = those below it. Nothing collective."""
    confidences, remaining = mined_from.confidences, mined_from.remaining
    population = confidences[remaining]
    threshold = quantile_threshold(population, ratio)
    positions = (remaining & hard_mask(confidences, threshold)).nonzero().squeeze(1)
    hard = tokens_at(mined_from, targets, positions)
    return MiningResult(exit_layer, threshold, int(population.numel()), hard, population,
                        remaining.nonzero().squeeze(1))


def reaching(passed: ExitPass) -> torch.Tensor:
    """(tokens,) bool: the tokens the cascade brings to the pass's exit (all at the first)."""
    if passed.remaining is None:
        return torch.ones(passed.hidden.shape[0], dtype=torch.bool, device=passed.hidden.device)
    return passed.remaining


def tokens_at(mined_from: MiningPool, targets: torch.Tensor, positions: torch.Tensor
              ) -> HardTokens:
    """The tokens at `positions` (flat, ascending: the hard ones, or MiningResult.reached when
    stages.N.tokens = "all"), with the hidden states of those in this process' share."""
    passed = mined_from.passed
    here = _within(positions, passed.offset, passed.offset + passed.hidden.shape[0])
    return HardTokens(hidden=passed.hidden[positions[here.start:here.stop] - passed.offset].clone(),
                      targets=targets.reshape(-1)[positions.cpu()].to(positions.device),
                      confidences=mined_from.confidences[positions].clone(),
                      positions=positions, here=here)


def _within(positions: torch.Tensor, start: int, stop: int) -> range:
    """The indices of the ascending `positions` that lie in [start, stop)."""
    bounds = torch.searchsorted(positions, torch.tensor([start, stop], device=positions.device))
    return range(*bounds.tolist())


def histogram(confidences: torch.Tensor, bins: int) -> tuple[list[float], list[int]]:
    counts = torch.histc(confidences.float(), bins=bins, min=0.0, max=1.0)
    edges = torch.linspace(0.0, 1.0, bins + 1)
    return [round(e, 6) for e in edges.tolist()], [int(c) for c in counts.tolist()]


def fitted_histogram(confidences: torch.Tensor, bins: int, threshold: float,
                     tail: float = 0.005) -> tuple[list[float], list[int]]:
    """`bins` equal bins from the confidences' `tail` to their `1 - tail` quantile (a few sure
    tokens do not stretch it), widened to the threshold: a weak model's confidences all lie in
    the first of `histogram`'s bins on [0, 1]. Tokens outside the range are not counted."""
    values = confidences.reshape(-1).float()
    if values.numel() == 0:
        return [0.0, 1.0], [0]
    low = min(float(quantile(values, tail)), threshold)
    high = max(float(quantile(values, 1.0 - tail)), threshold)
    if high - low < 1e-7:  # every confidence the same (up to float32 rounding)
        low, high = max(0.0, low - 0.005), high + 0.005
    counts = torch.histc(values, bins=bins, min=low, max=high)
    edges = torch.linspace(low, high, bins + 1, dtype=torch.float64)
    return [float(f"{e:.6g}") for e in edges.tolist()], [int(c) for c in counts.tolist()]


def log_histogram(confidences: torch.Tensor, bins: int, low: float, high: float
                  ) -> tuple[Optional[list[float]], Optional[list[int]]]:
    """`bins` bins of equal width in log10 from `low` to `high` (`fitted_histogram`'s range),
    for a log axis: a weak model's confidences span decades, and nearly all of them fall in
    the first two equal bins. (None, None) where the range reaches 0 or below (a signal that is
    not a probability, such as the negative entropy). Tokens outside it are not counted."""
    if low <= 0:
        return None, None
    logs = torch.linspace(math.log10(low), math.log10(high), bins + 1, dtype=torch.float64)
    # below the range anyway: clamped so that a 0 has a logarithm
    values = confidences.reshape(-1).double().clamp_min(low / 2).log10()
    counts = torch.histc(values, bins=bins, min=float(logs[0]), max=float(logs[-1]))
    return [float(f"{10 ** e:.6g}") for e in logs.tolist()], [int(c) for c in counts.tolist()]


def top_words(targets: torch.Tensor, vocab: Vocabulary, k: int) -> list[list]:
    counts = Counter(targets.tolist())
    return [[vocab.words[i], n] for i, n in counts.most_common(k)]


def examples_in_context(hard: HardTokens, batches: Batches, vocab: Vocabulary, k: int,
                        window: int = 8) -> list[dict]:
    """A few hard tokens spread over the split, each with the words that precede it."""
    if k == 0 or len(hard) == 0:
        return []
    seq_len = batches.x.shape[-1]
    flat_x = batches.x.reshape(-1, seq_len)
    picks = torch.linspace(0, len(hard) - 1, steps=min(k, len(hard))).round().long().unique()
    out = []
    for i in picks.tolist():
        row, col = divmod(int(hard.positions[i]), seq_len)
        context = flat_x[row, max(0, col + 1 - window): col + 1].tolist()
        out.append({"context": vocab.decode(context),
                    "target": vocab.words[int(hard.targets[i])],
                    "confidence": round(float(hard.confidences[i]), 6)})
    return out
