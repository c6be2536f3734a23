"""The joint early-exit baseline (joint.enabled), as today's early-exit LMs train (LayerSkip,
EE-LLM): one model from scratch, its loss a weighted sum of the head's loss at every exit.
The pipeline trains it as stage 1 (stages.JointTask), then calibrates, evaluates and sweeps
it by the same cascade, sweep and cost model as ASHEM."""
from __future__ import annotations

from typing import Any, Sequence

import torch

from .head import head_loss

ASHEM, JOINT = "ASHEM", "joint early exit"  # what a sweep's series say the model is


def method_name(settings: Any) -> str:
    """How a run's routed series are named: "joint early exit · ..." or "ASHEM · ..."."""
    return JOINT if settings.joint.enabled else ASHEM


def exit_weights(layers: Sequence[int], scheme: str) -> list[float]:
    """Each exit's loss weight, summing to 1: "equal", or "depth" (proportional to the exit's
    layers, so deeper exits weigh more)."""
    raw = [1.0] * len(layers) if scheme == "equal" else [float(n) for n in layers]
    return [w / sum(raw) for w in raw]


def joint_loss(states: Sequence[torch.Tensor], weight: torch.Tensor, targets: torch.Tensor,
               weights: Sequence[float]) -> torch.Tensor:
    """sum over exits e of weights[e] × the mean cross-entropy of states[e] (N, dim, as the head
    reads them) against targets (N,); with one exit of weight 1, exactly head_loss's."""
    losses = [head_loss(h, weight, targets) for h in states]
    total = losses[0] * weights[0]
    for w, loss in zip(weights[1:], losses[1:]):
        total = total + loss * w
    return total
