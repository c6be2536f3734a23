"""Honest compute: multiply-accumulates per token for every path through an early-exit model.

The spec counts blocks only (layers run / deepest layers). At this shape the output head
(dim × vocabulary) costs about 66 blocks, and an exit that decides by max-softmax must run it
just to measure its confidence, so the head dominates. Here a token is charged for:
- every block it runs, attention over the keys it really sees (the sequence length, or 1 when
  the layers above an exit take one token at a time);
- under spec inference (upper layers over whole sequences) the exited tokens too run the upper
  blocks, because later deep tokens attend to their upper-layer keys and values;
- under propagated inference an exited token's upper layers only project its frozen exit
  state to keys and values (2 · dim² per layer);
- each exit signal it was tested with (a whole head for max-softmax, dim for a linear exit
  classifier), and one head for the logits it leaves with (shared with the softmax signal).
Costs are relative to the plain deepest model: all its blocks over whole sequences, one head.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Sequence

from .model import block_macs_per_token, head_macs_per_token
from .names import PROPAGATED, SEQUENCE, SOFTMAX, TOKEN
from .settings import ModelSettings


@dataclass(frozen=True)
class CostModel:
    cfg: ModelSettings
    vocab_size: int
    seq_len: int
    exit_layers: tuple
    modes: tuple  # one per exit after the first: how its layers run
    signal: str = SOFTMAX

    @property
    def head(self) -> float:
        return head_macs_per_token(self.cfg, self.vocab_size)

    def block(self, mode: str) -> float:
        return block_macs_per_token(self.cfg, 1 if mode == TOKEN else self.seq_len)

    def plain(self) -> float:
        """The plain deepest model: every block over whole sequences, one head."""
        return self.exit_layers[-1] * self.block(SEQUENCE) + self.head

    def path(self, e: int) -> float:
        """MACs of a token that leaves at exit e (0-based)."""
        layers, last = self.exit_layers, len(self.exit_layers) - 1
        macs = layers[0] * self.block(SEQUENCE)
        for k in range(1, last + 1):
            span, mode = layers[k] - layers[k - 1], self.modes[k - 1]
            if k <= e or mode == SEQUENCE:
                macs += span * self.block(mode)
            elif mode == PROPAGATED:
                macs += span * 2 * self.cfg.dim * self.cfg.dim
        tested = min(e + 1, last)  # the last exit takes everyone without asking
        macs += tested * (self.head if self.signal == SOFTMAX else float(self.cfg.dim))
        if self.signal != SOFTMAX or e == last:
            macs += self.head  # the logits it leaves with
        return macs

    def relative(self, exit_fractions: Sequence[float]) -> float:
        return self.absolute(exit_fractions) / self.plain()

    def absolute(self, exit_fractions: Sequence[float]) -> float:
        return sum(f * self.path(e) for e, f in enumerate(exit_fractions))

    def compute_everything(self) -> float:
        """Every token through every block and every exit's head: what a routed evaluation
        costs when it decides afterwards which exit's logits to keep (a max-softmax path to
        the last exit)."""
        return replace(self, signal=SOFTMAX).path(len(self.exit_layers) - 1)


def spec_cost(exit_counts: Sequence[int], exit_layers: Sequence[int]) -> float:
    """The spec's formula: sum(tokens at exit e × layers of e) / (tokens × deepest layers)."""
    tokens = sum(exit_counts)
    return sum(c * n for c, n in zip(exit_counts, exit_layers)) / (tokens * exit_layers[-1])
