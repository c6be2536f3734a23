"""Hard-example mining: per-token confidence, the quantile threshold, the hard tokens.

Threshold and filtering are both per token (the spec's "critical" rule): the confidences of
every token of the mining split are flattened, the threshold is their `torch.quantile` at the
target ratio, and a token is hard when its own confidence is strictly below it.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from .data import Batches, Vocabulary
from .head import ExitStats, exit_stats
from .model import EarlyExitLM
from .routing import advance, exits_here


@dataclass
class ExitPass:
    """One split through the model up to an exit: hidden states and per-token statistics."""

    hidden: torch.Tensor  # (tokens, dim), in batch order
    stats: ExitStats
    reaching: Optional[torch.Tensor] = None  # (tokens,) bool: not let go by an earlier exit


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


@torch.no_grad()
def exit_pass(model: EarlyExitLM, batches: Batches, exit_layer: int,
              check: Optional[callable] = None, earlier_exits: Sequence[int] = (),
              earlier_thresholds: Sequence[float] = (), modes: Sequence[str] = ()
              ) -> ExitPass:
    """Every token of a split up to an exit. In a cascade the earlier exits route first
    (`modes`: how the layers after each earlier exit run, as at inference) and `reaching`
    marks the tokens they did not let go."""
    hidden, nll, conf, correct, reaching = [], [], [], [], []
    weight = model.head.weight
    exits = [*earlier_exits, exit_layer]
    for i in range(len(batches)):
        if check:
            check(i)
        x, y = batches.x[i], batches.y[i].reshape(-1)
        h = model.hidden(x, stop=exits[0])
        active = torch.ones(y.numel(), dtype=torch.bool, device=y.device)
        for e in range(1, len(exits)):
            flat = h.reshape(-1, weight.shape[1])
            stays = ~exits_here(exit_stats(flat, weight, y).confidence, earlier_thresholds[e - 1])
            active &= stays
            h = advance(model, h, exits[e - 1], exits[e], modes[e - 1], active.view(x.shape))
        h = h.reshape(-1, weight.shape[1])
        s = exit_stats(h, weight, y)
        hidden.append(h)
        nll.append(s.nll)
        conf.append(s.confidence)
        correct.append(s.correct)
        reaching.append(active)
    return ExitPass(torch.cat(hidden), ExitStats(torch.cat(nll), torch.cat(conf),
                                                 torch.cat(correct)),
                    torch.cat(reaching) if earlier_exits else None)


def quantile_threshold(confidences: torch.Tensor, ratio: float) -> float:
    return torch.quantile(confidences.reshape(-1).float(), ratio).item()


def hard_mask(confidences: torch.Tensor, threshold: float) -> torch.Tensor:
    return confidences < threshold


def mine(passed: ExitPass, targets: torch.Tensor, ratio: float, exit_layer: int,
         reaching: Optional[torch.Tensor] = None) -> MiningResult:
    """Threshold = the `ratio` quantile of the confidences of the tokens that reach this
    exit (`reaching`: a mask, default every token); hard = those of them strictly below it.
    At the first exit every token reaches it: exactly the spec's rule. At a later exit of an
    N-stage cascade only the tokens the earlier exits did not let go count."""
    confidences = passed.stats.confidence
    if reaching is None:
        reaching = passed.reaching
    if reaching is None:
        reaching = torch.ones_like(confidences, dtype=torch.bool)
    population = confidences[reaching]
    threshold = quantile_threshold(population, ratio)
    mask = reaching & hard_mask(confidences, threshold)
    positions = mask.nonzero().squeeze(1)
    hard = HardTokens(hidden=passed.hidden[positions].clone(),
                      targets=targets.reshape(-1)[positions].clone(),
                      confidences=confidences[positions].clone(),
                      positions=positions)
    return MiningResult(exit_layer, threshold, int(population.numel()), hard, population)


def histogram(confidences: torch.Tensor, bins: int) -> tuple[list[float], list[int]]:
    counts = torch.histc(confidences.float(), bins=bins, min=0.0, max=1.0)
    edges = torch.linspace(0.0, 1.0, bins + 1)
    return [round(e, 6) for e in edges.tolist()], [int(c) for c in counts.tolist()]


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
        pos = int(hard.positions[i])
        row, col = divmod(pos, seq_len)
        context = flat_x[row, max(0, col + 1 - window): col + 1].tolist()
        out.append({"context": vocab.decode(context),
                    "target": vocab.words[int(hard.targets[i])],
                    "confidence": round(float(hard.confidences[i]), 6)})
    return out
