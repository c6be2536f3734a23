"""A stage-2 step (64 hard tokens through the spec's upper layers and head) timed on the main
thread or in a worker thread, as the dashboard runs the engine (issue #13's stage-2 slowdown).

    for i in 1 2 3 4 5; do python bench/omp_teams.py thread; done   # a worker thread
    for i in 1 2 3; do python bench/omp_teams.py main; done         # the main thread
    python bench/omp_teams.py thread-after-main-op   # the main thread ran a parallel op first

Prints the median milliseconds of 200 steps and the page faults they took. Run it several
times. Before ashem_engine/memory.py set one allocator arena, the worker thread was sometimes
~25 % slower (27.3-27.6 ms with ~1.0 M minor page faults, against 21.8-23.0 ms and ~55 K on
the main thread; 2026-11-26, 2-core machine): a thread's own glibc arena gave the head's big
buffers back as fresh pages. With one arena: 22.0-22.1 ms and ~57 K faults, 4 of 4 processes.
"""
from __future__ import annotations

import resource
import sys
import threading
import time

import torch

from ashem_engine.head import head_loss
from ashem_engine.memory import keep_freed_memory
from ashem_engine.model import EarlyExitLM
from ashem_engine.settings import Settings
from ashem_engine.stages import clip_gradients, make_optimizer


def median_step_ms(out: list) -> None:
    torch.set_num_threads(2)
    s = Settings()
    model = EarlyExitLM(69830, 2, s.model).grow(4)
    model.freeze_lower(2)
    optimizer = make_optimizer(model, 1e-3, s.optimizer)
    params = [p for p in model.parameters() if p.requires_grad]
    hidden, y = torch.randn(64, 1, 64), torch.randint(0, 69830, (64,))

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss = head_loss(model.run_layers(hidden, 2, 4)[:, 0, :], model.head.weight, y)
        loss.item()
        loss.backward()
        clip_gradients(params, 1.0)
        optimizer.step()

    for _ in range(10):
        step()
    times = []
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(200):
        started = time.perf_counter()
        step()
        times.append(time.perf_counter() - started)
    out.append(sorted(times)[len(times) // 2] * 1000)
    out.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults)


def main() -> None:
    mode = sys.argv[1] if len(sys.argv) > 1 else "thread"
    keep_freed_memory()
    out: list = []
    if mode == "main":
        median_step_ms(out)
    else:
        if mode == "thread-after-main-op":
            torch.ones(1_000_000).mul_(2).sum()
        worker = threading.Thread(target=median_step_ms, args=(out,))
        worker.start()
        worker.join()
    print(f"{mode}: {out[0]:.1f} ms per stage-2 step (median of 200), {out[1]:,} page faults")


if __name__ == "__main__":
    main()
