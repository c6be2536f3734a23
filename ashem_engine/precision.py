"""run.precision: fp32 everywhere, or bf16 matrix products and activations.

bf16 is PyTorch's own autocast, entered once around a run's steps (it is thread-local, so
it follows the engine into the dashboard's worker thread): every Linear and attention runs in
bf16, while the weights, the optimizer state, the residual stream, norms, the loss, its
log-sum-exp, confidences and every reported figure stay float32. The fused head (head.py)
asks `low_precision` and does its products in bf16 in the same way.
"""
from __future__ import annotations

import contextlib

import torch

from .names import BF16


def compute(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    if precision != BF16:
        return contextlib.nullcontext()
    # No cast cache: it lives as long as the context, and this one spans optimizer steps.
    return torch.autocast(device.type, dtype=torch.bfloat16, cache_enabled=False)


def low_precision(device: torch.device) -> bool:
    """Inside a bf16 run's `compute` on this device."""
    return torch.is_autocast_enabled(device.type) and \
        torch.get_autocast_dtype(device.type) == torch.bfloat16
