"""The cascade: a token leaves at the first exit whose signal reaches its threshold; the
last exit takes the rest (with two exits, the spec's two-stage inference). The exit rule,
advancing hidden states between exits and routing live here and nowhere else. A batch is
routed either computing everything (every block for every token: mining, sweeps, checks)
or only what the decision needs (the real early exit), with the same exits (tested):
- TOKEN mode (as trained in the token context): the deep tokens' states are gathered and run
  through the upper layers as sequences of length 1.
- PROPAGATED mode (sequence context): an exited token keeps its exit state in the layers
  above; each upper layer projects it to keys and values (so later deep tokens can attend to
  it) but runs no query, attention or feed-forward for it. Deep tokens run the whole block.
- SEQUENCE mode (the spec's evaluation): deep tokens attend to the exited tokens' real
  upper-layer keys and values, so every token runs the upper blocks; only heads are saved."""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Callable, Optional, Sequence

import torch

from .costs import CostModel, spec_cost
from .data import Batches
from .dist import World
from .exit_signals import SIGNALS, AtExit, ExitSignal
from .head import ExitStats, exit_stats
from .model import Block, EarlyExitLM, attention, rotary_tables, rotate_half
from .names import CLASSIFIER, MODES, PROPAGATED, SEQUENCE, SOFTMAX, SPEC, TOKEN


@dataclass(frozen=True)
class Cascade:
    """Exit e is after layer layers[e]. Every exit but the last has a threshold and the
    cascade's signal (exit_signals.SIGNALS; a trained one's scorer per exit in `trained`).
    modes[e - 1]: how the layers from exit e - 1 up to exit e run."""

    layers: list
    thresholds: list = field(default_factory=list)
    modes: tuple = ()
    trained: Optional[list] = None
    signal: str = SOFTMAX

    def __post_init__(self):
        exits = len(self.layers) - 1
        scorers = exits if SIGNALS[self.signal].train else 0
        if (len(self.thresholds), len(self.modes), len(self.trained or ())) != \
                (exits, exits, scorers):
            raise ValueError("one threshold and mode per exit before the last, and a "
                             "trained scorer there for a trained signal only")
        if not set(self.modes) <= set(MODES):
            raise ValueError(f"unknown inference mode in {self.modes}")

    @classmethod
    def of(cls, layers: Sequence[int], thresholds: Sequence[float] = (),
           modes: Optional[Sequence[str]] = None, classifiers: Optional[Sequence] = None
           ) -> "Cascade":
        """From the lists run directories keep; modes default to SEQUENCE."""
        modes = (SEQUENCE,) * len(thresholds) if modes is None else tuple(modes)
        return cls(list(layers), list(thresholds), modes, list(classifiers or []) or None,
                   CLASSIFIER if classifiers else SOFTMAX)

    def signalled_by(self, signal: str, trained: Optional[Sequence] = None) -> "Cascade":
        """The cascade deciding by `signal`; `trained`: its scorers, if it is trained."""
        return replace(self, signal=signal,
                       trained=list(trained or []) or None if SIGNALS[signal].train else None)

    @property
    def last(self) -> int:
        return len(self.layers) - 1

    @property
    def exit_signal(self) -> ExitSignal:
        return SIGNALS[self.signal]

    @property
    def only_needed_is_exact(self) -> bool:
        """Whether the real early exit does the very arithmetic of computing everything:
        every layer over whole sequences, heads for the tokens still in the cascade."""
        return all(m == SEQUENCE for m in self.modes) and self.exit_signal.reads_head

    def first(self, n: int) -> "Cascade":
        """The first n exits; the n-th becomes the last."""
        return replace(self, layers=self.layers[:n], thresholds=self.thresholds[:n - 1],
                       modes=self.modes[:n - 1], trained=(self.trained or [])[:n - 1] or None)

    def scores(self, e: int, hidden: torch.Tensor, stats: Optional[ExitStats],
               head: torch.Tensor) -> torch.Tensor:
        """Exit e's signal for tokens with these (N, dim) states and statistics (None if
        the signal reads no head), given the output head's weight."""
        trained = self.trained[e] if self.trained else None
        return self.exit_signal.score(AtExit(hidden, stats, head, trained))

    def leave(self, e: int, scores: torch.Tensor) -> torch.Tensor:
        """The exit rule: a token leaves exit e when its signal reaches the threshold."""
        return scores >= self.thresholds[e]

    def costs(self, model: EarlyExitLM, seq_len: int) -> CostModel:
        return CostModel(model.cfg, model.vocab_size, seq_len, tuple(self.layers), self.modes,
                         self.signal)

    def choose(self, scores: Sequence[torch.Tensor]) -> torch.Tensor:
        """Exit index per token from its signal at each exit but the last, known beforehand."""
        if len(scores) != self.last:
            raise ValueError("one score tensor per exit before the last")
        n = scores[0].numel() if scores else 0
        chosen = torch.full((n,), self.last, dtype=torch.long)
        remaining = torch.ones(n, dtype=torch.bool)
        for e, score in enumerate(scores):
            leave = remaining & self.leave(e, score.reshape(-1).cpu())
            chosen[leave] = e
            remaining &= ~leave
        return chosen


def inference_modes(stages: Sequence, inference: str) -> tuple:
    """How the layers of each stage after the first run at inference: the spec's way, over
    whole sequences; or "as_trained", the way their stage's context trained them."""
    if inference == SPEC:
        return tuple(SEQUENCE for _ in stages[1:])
    return tuple(TOKEN if st.context == "token" else PROPAGATED for st in stages[1:])


# -- advancing hidden states from one exit to the next ---------------------------------------

def advance(model: EarlyExitLM, h: torch.Tensor, start: int, stop: int, mode: str,
            remaining: torch.Tensor, only_needed: bool = False) -> torch.Tensor:
    """(B, T, dim) hidden states after layer `start` -> after layer `stop`. `remaining`
    (B, T) marks the tokens still in the cascade; PROPAGATED keeps the others' states. By
    default every token is computed; `only_needed`: what the remaining tokens need."""
    if mode == SEQUENCE:
        return model.run_layers(h, start, stop)
    B, T, C = h.shape
    if mode == TOKEN and not only_needed:
        return model.run_layers(h.reshape(B * T, 1, C), start, stop).reshape(B, T, C)
    if mode == TOKEN:
        rows = remaining.reshape(-1).nonzero().squeeze(1)
        deep = model.run_layers(h.reshape(B * T, C)[rows][:, None, :], start, stop)[:, 0, :]
        return h.reshape(B * T, C).index_copy(0, rows, deep).view(B, T, C)
    keep, held = ~remaining[..., None], h
    for block in model.layers[start:stop]:
        h = sparse_block(block, h, remaining) if only_needed else \
            torch.where(keep, held, block(h))
    return h


def sparse_block(block: Block, state: torch.Tensor, remaining: torch.Tensor) -> torch.Tensor:
    """One block for the remaining tokens only. state (B, T, dim); remaining (B, T) bool.
    Keys and values come from every position's state; queries, attention and the
    feed-forward run for the remaining positions (padded per row to the longest row)."""
    B, T, C = state.shape
    attn = block.attn
    H, D = attn.heads, attn.head_dim
    per_row = remaining.sum(1)
    M = int(per_row.max()) if B else 0
    if M == 0:
        return state
    # positions of each row's remaining tokens, padded with position 0 (masked out below)
    order = torch.argsort((~remaining).to(torch.int8), dim=1, stable=True)[:, :M]
    valid = torch.arange(M, device=state.device)[None, :] < per_row[:, None]
    pos = torch.where(valid, order, torch.zeros_like(order))
    rows = torch.arange(B, device=state.device)[:, None]
    x = state[rows, pos]  # (B, M, C)
    cos, sin = rotary_tables(T, D, attn.rope_base, state.device)
    read = block.attention_input(state)
    k = attn.wk(read).view(B, T, H, D).transpose(1, 2)
    v = attn.wv(read).view(B, T, H, D).transpose(1, 2)
    k = k * cos + rotate_half(k) * sin
    q = attn.wq(read[rows, pos]).view(B, M, H, D).transpose(1, 2)
    qc, qs = cos[pos][:, None], sin[pos][:, None]  # (B, 1, M, D)
    q = q * qc + rotate_half(q) * qs
    allowed = torch.arange(T, device=state.device)[None, None, :] <= pos[:, :, None]
    y = attention(q, k, v, attn_mask=allowed[:, None])
    x = block.finish(x, attn.wo(y.transpose(1, 2).reshape(B, M, C)))
    out = state.clone()
    out[rows.expand(B, M)[valid], pos[valid]] = x[valid]
    return out


# -- routing a batch -----------------------------------------------------------------------

@dataclass
class ExitPass:
    """Every token of a batch or a split at one exit, in batch order: (tokens, dim) hidden
    states and their statistics; `remaining` marks the tokens no earlier exit let go (None:
    all). Under torchrun, a split's pass is this rank's share: its tokens from `offset` on."""

    hidden: torch.Tensor
    stats: Optional[ExitStats] = None
    remaining: Optional[torch.Tensor] = None
    offset: int = 0


@dataclass
class RoutedTokens:
    """Per token of one batch: the exit it left at, its NLL and correctness there, and its
    hidden state at that exit (so logits = head(hidden)); `every_exit`: an ExitPass per exit."""

    exit_index: torch.Tensor  # (N,) long
    nll: torch.Tensor  # (N,)
    correct: torch.Tensor  # (N,) bool
    hidden: torch.Tensor  # (N, dim)
    every_exit: list = field(default_factory=list)

    def leave(self, rows: torch.Tensor, e: int, stats: ExitStats, hidden: torch.Tensor):
        self.nll[rows], self.correct[rows], self.hidden[rows] = stats.nll, stats.correct, hidden
        self.exit_index[rows] = e


@torch.no_grad()
def route(model: EarlyExitLM, cascade: Cascade, x: torch.Tensor, y: torch.Tensor,
          first: Optional[ExitPass] = None, only_needed: bool = False,
          every_exit: bool = False) -> RoutedTokens:
    """One batch (B, T) of token ids through the cascade. By default every block runs for every
    token (the reference) and each exit's head for the tokens still in the cascade; `every_exit`:
    every token's head at every exit too, each kept as an ExitPass. `only_needed`: the real early
    exit, computing only what the decision needs (same exits). `first`: the batch's first exit.
    Heads and signals read model.to_head(state); ExitPass keeps the raw states (for the layers)."""
    if only_needed and every_exit:
        raise ValueError("every exit's statistics need every token computed")
    weight, y, device = model.head.weight, y.reshape(-1), y.device
    n = y.numel()
    routed = RoutedTokens(  # every token leaves somewhere: each entry is filled below
        torch.full((n,), cascade.last, dtype=torch.long, device=device),
        torch.empty(n, device=device), torch.empty(n, dtype=torch.bool, device=device),
        torch.empty(n, weight.shape[1], device=device))
    remaining_rows = torch.arange(n, device=device)
    remaining = torch.ones(n, dtype=torch.bool, device=device)
    h, everyone = (model.hidden(x, stop=cascade.layers[0]), None) if first is None else \
        (first.hidden.view(*x.shape, -1), first.stats)
    for e, layer in enumerate(cascade.layers):
        if e > 0:
            h = advance(model, h, cascade.layers[e - 1], layer, cascade.modes[e - 1],
                        remaining.view(x.shape), only_needed)
            everyone = None
        if every_exit:
            everyone = exit_stats(model.to_head(h.reshape(n, -1)), weight, y) \
                if everyone is None else everyone
            routed.every_exit.append(ExitPass(h.reshape(n, -1), everyone))
        flat, targets = model.to_head(h.reshape(n, -1)[remaining_rows]), y[remaining_rows]
        if only_needed and not cascade.exit_signal.reads_head and e < cascade.last:
            leave = cascade.leave(e, cascade.scores(e, flat, None, weight))
            s = exit_stats(flat[leave], weight, targets[leave])  # heads for leavers only
        else:
            s = exit_stats(flat, weight, targets) if everyone is None else \
                everyone[remaining_rows]
            if e == cascade.last:  # the last exit takes everyone left
                routed.leave(remaining_rows, e, s, flat)
                break
            leave = cascade.leave(e, cascade.scores(e, flat, s, weight))
            s = s[leave]
        rows = remaining_rows[leave]
        routed.leave(rows, e, s, flat[leave])
        remaining[rows] = False
        remaining_rows = remaining_rows[~leave]
    return routed


# -- a split through the cascade -----------------------------------------------------------

@dataclass
class Evaluation:
    tokens: int
    nll_sum: float
    correct: int
    exit_layers: list
    exit_counts: list
    spec_cost: float  # averaged per batch, as the reference does
    honest_cost: float
    thresholds: list = field(default_factory=list)
    macs_per_token: float = 0.0  # what honest_cost is relative to: absolute, per token

    @property
    def ppl(self) -> float:
        return math.exp(self.nll_sum / self.tokens)

    @property
    def accuracy(self) -> float:
        return self.correct / self.tokens

    @property
    def exit_ratios(self) -> list:
        return [c / self.tokens for c in self.exit_counts]


def tally(model: EarlyExitLM, cascade: Cascade, seq_len: int, batch_tokens: int,
          parts: Sequence[tuple]) -> Evaluation:
    """The evaluation of routed tokens: `parts` of (exit index, NLL, correctness) per token,
    each part one or more whole batches of `batch_tokens` tokens."""
    nll_sum, correct, tokens, counts, batch_costs = 0.0, 0, 0, [0] * len(cascade.layers), []
    for exit_index, nll, right in parts:
        nll_sum += float(nll.double().sum())
        correct += int(right.sum())
        tokens += nll.numel()
        for batch in exit_index.view(-1, batch_tokens):
            per_exit = torch.bincount(batch, minlength=len(counts)).tolist()
            counts = [a + b for a, b in zip(counts, per_exit)]
            batch_costs.append(spec_cost(per_exit, cascade.layers))
    fractions, costs = [c / tokens for c in counts], cascade.costs(model, seq_len)
    return Evaluation(tokens, nll_sum, correct, cascade.layers, counts,
                      sum(batch_costs) / len(batch_costs), costs.relative(fractions),
                      cascade.thresholds, costs.absolute(fractions))


@torch.no_grad()
def evaluate(model: EarlyExitLM, batches: Batches, cascade: Cascade,
             check: Callable[[], None] = lambda: None,
             first: Optional[ExitPass] = None) -> Evaluation:
    """Routed evaluation over a split (one exit: plain), by the real early exit where it does
    the arithmetic of computing everything, else computing everything. `first`: the split's
    first exit when known (this rank's share under torchrun); `check()` before every batch."""
    if len(batches) == 0:
        raise ValueError("evaluate needs at least one batch")
    n, parts, world = batches.y[0].numel(), [], World.current()
    start = world.share(len(batches)).start
    for i in world.each_of_mine(len(batches), check):
        rows = slice((i - start) * n, (i - start + 1) * n)
        known = None if first is None else \
            ExitPass(first.hidden[rows], None if first.stats is None else first.stats[rows])
        r = route(model, cascade, *batches.batch(i), known,
                  only_needed=cascade.only_needed_is_exact)
        parts.append((r.exit_index, r.nll, r.correct))
    if world.parallel:  # every batch's part, in batch order, as one process has them
        gathered = [world.gather_tokens(torch.cat(p), batches).view(len(batches), n)
                    for p in zip(*parts)]
        parts = list(zip(*gathered))
    return tally(model, cascade, batches.x.shape[-1], n, parts)
