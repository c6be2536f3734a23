"""Exit signals, one entry each (SIGNALS): how a signal scores a token at an exit (higher
leaves earlier; thresholds are quantiles, so scales do not matter), what deciding costs and
how a trained one is trained. It imports no torch: settings validation reads it."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Optional

from .names import CLASSIFIER, SOFTMAX

if TYPE_CHECKING:
    import torch

    from .dist import World
    from .head import ExitStats


@dataclass(frozen=True)
class AtExit:
    """What a signal may read of N tokens at one exit."""

    hidden: "torch.Tensor"  # (N, dim)
    stats: Optional["ExitStats"]  # the head's statistics; None if the signal reads no head
    head: "torch.Tensor"  # (vocabulary, dim): the output head's weight
    trained: Any = None  # this exit's trained scorer, for a trained signal


@dataclass(frozen=True)
class ExitSignal:
    name: str  # in settings (evaluation.signals), sweep.json and the event log: never renamed
    label: str  # in series names and figure meanings
    score: Callable[[AtExit], "torch.Tensor"]  # (N,), higher = leaves earlier
    reads_head: bool  # deciding runs the exit's whole head; a leaving token keeps its logits
    own_macs: Callable[[int], float] = lambda dim: 0.0  # per decision, besides any head
    # (hidden, stats, seed, world) -> the scorer of one exit; None: nothing to train
    train: Optional[Callable[["torch.Tensor", "ExitStats", int, "World"], Any]] = None
    # Calibration finds a later exit's tokens routing by this signal (None: by itself).
    population_routed_by: Optional[str] = None


def _train_classifier(hidden, stats, seed: int, world):
    from .signals import train_exit_classifier  # torch: loaded only when a classifier trains

    return train_exit_classifier(hidden, stats.confidence, seed=seed, world=world)


def _negative_entropy(at: AtExit) -> "torch.Tensor":
    """-H(softmax(h·Wᵀ)) per token, from a chunk of tokens' logits at a time."""
    from .head import default_chunk  # torch: loaded only when a score is computed

    hidden = at.hidden.reshape(-1, at.head.shape[1])
    out, chunk = hidden.new_empty(len(hidden)).float(), default_chunk(hidden.device)
    for start in range(0, len(hidden), chunk):
        log_p = (hidden[start:start + chunk] @ at.head.t()).float().log_softmax(dim=1)
        out[start:start + chunk] = (log_p.exp() * log_p).sum(dim=1)
    return out


SIGNALS = {s.name: s for s in (
    ExitSignal(SOFTMAX, "max-softmax", lambda at: at.stats.confidence, reads_head=True),
    ExitSignal(CLASSIFIER, "exit classifier", lambda at: at.trained.score(at.hidden),
               reads_head=False, own_macs=lambda dim: float(dim),  # w·h
               train=_train_classifier,  # it predicts max-softmax: routed by it (tests/golden)
               population_routed_by=SOFTMAX),
    # DeeBERT's rule: leave when the exit's softmax is sure (low entropy).
    ExitSignal("entropy", "softmax entropy", _negative_entropy, reads_head=True),
)}
