"""Shared bits of the engine tests (not a test module)."""
from __future__ import annotations

import os
import signal
import subprocess

import pytest
import torch

STARTED: list[subprocess.Popen] = []  # the jobs (torchrun and its ranks) of the running test


def started(job: subprocess.Popen) -> subprocess.Popen:
    """Registers a job started with start_new_session=True: the teardown ends its group."""
    STARTED.append(job)
    return job


@pytest.fixture(autouse=True)
def no_job_left_running():
    """A test that fails while its job runs (a held run waits for ever) leaves no process
    behind: a left one polls its command log for good and slows every later benchmark."""
    yield
    while STARTED:
        job = STARTED.pop()
        if job.poll() is None:
            try:
                os.killpg(job.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            job.wait()


@pytest.fixture(autouse=True)
def single_thread():
    """One intra-op thread per test: the machine has 2 cores shared with long benchmarks, and
    two spinning OpenMP threads on a busy machine make tiny ops ~50x slower. Restored after,
    because run_ashem sets the process-wide thread count from run.threads."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def finished_tiny_run(tmp, *overrides: str) -> tuple:
    """A tiny run with `overrides`, finished: (settings, its events, its RunResult)."""
    from ashem_engine.run import run_ashem
    from tiny import tiny_corpus, tiny_settings

    settings = tiny_settings(tmp, *overrides)
    events: list = []
    result = run_ashem(settings, [events.append], corpus=tiny_corpus(settings))
    assert result.status == "finished", result.error
    return settings, events, result


def without_keys(value, keys):
    """`value` with every dict key in `keys` left out, at every depth."""
    if isinstance(value, dict):
        return {k: without_keys(v, keys) for k, v in value.items() if k not in keys}
    if isinstance(value, list):
        return [without_keys(v, keys) for v in value]
    return value
