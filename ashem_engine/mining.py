"""Hard-example mining: per-token confidence, the quantile threshold, the hard tokens.

Threshold and filtering are both per token (the spec's "critical" rule): the confidences of
every token of the mining split are flattened, the threshold is their `torch.quantile` at the
target ratio, and a token is hard when its own confidence is strictly below it.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Callable

import torch

from .cascade import Cascade, ExitPass, route
from .data import Batches, Vocabulary
from .dist import World
from .head import ExitStats
from .model import EarlyExitLM


@dataclass
class HardTokens:
    hidden: torch.Tensor  # (K, dim) hidden state at the exit layer
    targets: torch.Tensor  # (K,)
    confidences: torch.Tensor  # (K,)
    positions: torch.Tensor  # (K,) flat index into the split's tokens (batch-major)

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
              check: Callable[[], None] = lambda: None) -> ExitPass:
    """Every token of a split at the cascade's last exit, computing everything; `remaining`:
    those the earlier exits did not let go (None with one exit). `check()`: before a batch.
    Under torchrun each rank routes its share of the batches and every rank gets them all."""
    passes, remaining, world = [], [], World.current()
    for i in world.each_of_mine(len(batches), check):
        routed = route(model, cascade, batches.x[i], batches.y[i], every_exit=True)
        passes.append(routed.every_exit[-1])
        remaining.append(routed.exit_index == cascade.last)
    def whole(t: torch.Tensor) -> torch.Tensor:  # under torchrun: every rank's batches
        return world.gather_tokens(t, batches)

    return ExitPass(whole(torch.cat([p.hidden for p in passes])),
                    ExitStats.cat([p.stats for p in passes]).apply(whole),
                    whole(torch.cat(remaining)) if cascade.last else None)


def quantile_threshold(confidences: torch.Tensor, ratio: float) -> float:
    return torch.quantile(confidences.reshape(-1).float(), ratio).item()


def hard_mask(confidences: torch.Tensor, threshold: float) -> torch.Tensor:
    return confidences < threshold


def mine(passed: ExitPass, targets: torch.Tensor, ratio: float, exit_layer: int
         ) -> MiningResult:
    """Threshold = the `ratio` quantile of the confidences of the tokens still in the cascade
    at this exit (the pass's `remaining`); hard = those of them strictly below it. At the
    first exit that is every token (the spec's rule); at a later exit only those the earlier
    exits did not let go."""
    confidences, remaining = passed.stats.confidence, reaching(passed)
    population = confidences[remaining]
    threshold = quantile_threshold(population, ratio)
    positions = (remaining & hard_mask(confidences, threshold)).nonzero().squeeze(1)
    hard = HardTokens(hidden=passed.hidden[positions].clone(),
                      targets=targets.reshape(-1)[positions].clone(),
                      confidences=confidences[positions].clone(),
                      positions=positions)
    return MiningResult(exit_layer, threshold, int(population.numel()), hard, population,
                        remaining.nonzero().squeeze(1))


def reaching(passed: ExitPass) -> torch.Tensor:
    """(tokens,) bool: the tokens the cascade brings to the pass's exit (all at the first)."""
    if passed.remaining is None:
        return torch.ones(passed.hidden.shape[0], dtype=torch.bool, device=passed.hidden.device)
    return passed.remaining


def tokens_at(passed: ExitPass, targets: torch.Tensor, positions: torch.Tensor) -> HardTokens:
    """The tokens at `positions` (flat) in the form of the hard tokens: every token that
    reached the exit when stages.N.tokens = "all" (MiningResult.reached)."""
    return HardTokens(hidden=passed.hidden[positions], targets=targets.reshape(-1)[positions],
                      confidences=passed.stats.confidence[positions], positions=positions)


def histogram(confidences: torch.Tensor, bins: int) -> tuple[list[float], list[int]]:
    counts = torch.histc(confidences.float(), bins=bins, min=0.0, max=1.0)
    edges = torch.linspace(0.0, 1.0, bins + 1)
    return [round(e, 6) for e in edges.tolist()], [int(c) for c in counts.tolist()]


def fitted_histogram(confidences: torch.Tensor, bins: int, threshold: float,
                     tail: float = 0.005) -> tuple[list[float], list[int]]:
    """`bins` equal bins over the range the confidences fill: from their `tail` to their
    `1 - tail` quantile (a few near-certain tokens do not stretch it), widened to include
    the threshold. A weak model's confidences all lie in the first of `histogram`'s bins
    on [0, 1]; these show their shape. Tokens outside the range are not counted."""
    values = confidences.reshape(-1).float()
    if values.numel() == 0:
        return [0.0, 1.0], [0]
    q = torch.quantile(values, torch.tensor([tail, 1.0 - tail], dtype=values.dtype))
    low, high = min(float(q[0]), threshold), max(float(q[1]), threshold)
    if high - low < 1e-7:  # every confidence the same (up to float32 rounding)
        low, high = max(0.0, low - 0.005), high + 0.005
    counts = torch.histc(values, bins=bins, min=low, max=high)
    edges = torch.linspace(low, high, bins + 1, dtype=torch.float64)
    return [float(f"{e:.6g}") for e in edges.tolist()], [int(c) for c in counts.tolist()]


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
