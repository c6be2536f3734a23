"""Honest compute: multiply-accumulates per token of every path through an early-exit model.

The spec counts blocks only, but the output head costs dozens of blocks and an exit reading
it runs it just to decide. A token is charged for every block it runs (exited tokens too where
later tokens attend to them), each exit signal it is tested with and one head for its logits,
relative to the plain deepest model; a training step (`training_macs`) by the same rule,
matmul by matmul. The whole rule: docs/REPRODUCTION.md, "How compute is counted"."""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Sequence

import torch

from .exit_signals import SIGNALS
from .model import EarlyExitLM, block_macs_per_token, head_macs_per_token
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
        signal = SIGNALS[self.signal]
        macs += tested * ((self.head if signal.reads_head else 0.0) + signal.own_macs(self.cfg.dim))
        if not signal.reads_head or e == last:
            macs += self.head  # the logits it leaves with
        return macs

    def relative(self, exit_fractions: Sequence[float]) -> float:
        return self.absolute(exit_fractions) / self.plain()

    def absolute(self, exit_fractions: Sequence[float]) -> float:
        return sum(f * self.path(e) for e, f in enumerate(exit_fractions))

    def routed(self, exit_counts: Sequence[int], first_known: bool = False,
               first_stats_known: bool = False) -> float:
        """Forward MACs of routing tokens by max-softmax computing everything (as validation
        does): every token through every block, each exit's head for the tokens still in
        the cascade there. `first_known`: the first exit's states are given (no blocks);
        `first_stats_known`: its statistics too (no head there)."""
        layers, tokens = self.exit_layers, sum(exit_counts)
        blocks = 0.0 if first_known else layers[0] * self.block(SEQUENCE)
        for k in range(1, len(layers)):
            blocks += (layers[k] - layers[k - 1]) * self.block(self.modes[k - 1])
        heads = sum(sum(exit_counts[e:]) for e in range(1 if first_stats_known else 0,
                                                         len(exit_counts)))
        return tokens * blocks + heads * self.head

    def blocks(self) -> float:
        """Block MACs per token of computing everything: every block, each in its mode (no head)."""
        layers = self.exit_layers
        return layers[0] * self.block(SEQUENCE) + sum(
            (layers[k] - layers[k - 1]) * self.block(self.modes[k - 1])
            for k in range(1, len(layers)))

    def compute_everything(self) -> float:
        """Every token through every block and every exit's head (a max-softmax path to the last
        exit): what a routed evaluation costs that picks an exit's logits afterwards."""
        return replace(self, signal=SOFTMAX).path(len(self.exit_layers) - 1)


def spec_cost(exit_counts: Sequence[int], exit_layers: Sequence[int]) -> float:
    """The spec's formula: sum(tokens at exit e × layers of e) / (tokens × deepest layers)."""
    tokens = sum(exit_counts)
    return sum(c * n for c, n in zip(exit_counts, exit_layers)) / (tokens * exit_layers[-1])


@dataclass(frozen=True)
class TrainingStep:
    """The shape of one training step, for the whole batch (every process' rows)."""
    positions: int  # token positions that run the blocks
    seq_len: int  # the length they run at (1 in the token context)
    start: int  # the first block run: 0 from token ids (the embedding), else stored states
    # tokens whose states go through the head into the loss; in a joint step (stages.JointTask)
    # tokens × exits: each token's state at every exit goes through the head
    loss_tokens: int


@dataclass(frozen=True)
class StepMacs:
    forward: float
    backward: float

    @property
    def total(self) -> float:
        return self.forward + self.backward


def training_macs(model: EarlyExitLM, step: TrainingStep) -> StepMacs:
    """MACs of one training step as `model`'s requires_grad flags stand (docs/REPRODUCTION.md)."""
    cfg = model.cfg
    reads_input = 3 * cfg.dim * cfg.dim  # query, key and value projections
    after = cfg.dim * cfg.dim + 3 * cfg.dim * cfg.ffn_hidden  # output projection, feed-forward
    attend = block_macs_per_token(cfg, step.seq_len) - reads_input - after  # scores, values
    below = step.start == 0 and _trains(model.embedding)
    forward = backward = 0.0
    for block in model.layers[step.start:]:
        own = _trains(block)
        forward += reads_input + after + attend
        backward += sum(m.in_features * m.out_features for m in block.modules()
                        if isinstance(m, torch.nn.Linear) and m.weight.requires_grad)
        backward += (reads_input if below else 0) + (after + 2 * attend if below or own else 0)
        below = below or own
    head = head_macs_per_token(cfg, model.vocab_size)
    head_backward = head * (int(model.head.weight.requires_grad) + int(below))
    return StepMacs(step.positions * forward + step.loss_tokens * head,
                    step.positions * backward + step.loss_tokens * head_backward)


def _trains(module: torch.nn.Module) -> bool:
    return any(p.requires_grad for p in module.parameters())
