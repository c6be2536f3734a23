"""run.precision: fp32 everywhere, or bf16 matrix products and activations: PyTorch's own
autocast, entered once around a run's steps in the thread that runs them (it is thread-local),
so weights, optimizer state, the residual stream, norms, the loss and every figure stay
float32. The fused head (head.py) asks `low_precision` and does its products in bf16 too."""
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
