"""Shared bits of the engine tests (not a test module)."""
from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def single_thread():
    """One intra-op thread per test: the machine has 2 cores shared with long benchmarks, and
    two spinning OpenMP threads on a busy machine make tiny ops ~50x slower. Restored after,
    because run_ashem sets the process-wide thread count from run.threads."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
