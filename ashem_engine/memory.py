"""The C allocator, tuned once per process for a training loop's big temporaries.

glibc serves blocks over its mmap threshold (128 KB to 32 MB, adapting) with fresh pages and
unmaps them on free, so each step's 18 MB head gradient and logits buffers come back as new
pages the kernel must zero on first touch, and are unmapped again when the step frees them.
Keeping freed memory in the heap for reuse cut a stage-2 step from 33-35 ms to 24 ms in fp32
and from 34 ms to 16 ms in bf16 on the 2-core target machine (bench numbers in
docs/REPRODUCTION.md). The arithmetic, and so every figure, is unchanged.

The same must hold off the main thread, where the dashboard runs the engine: glibc gives a
new thread its own arena, made of 64 MB heaps, and there the head's 18-36 MB buffers kept
coming back as fresh pages (1.0 M page faults in 200 stage-2 steps against 55 K on the main
thread; 27.5 against 22.0 ms per step, in some processes and not others: bench/omp_teams.py).
One arena for every thread keeps the heap's reuse everywhere; it must be set before the
threads start, so the commands call `keep_freed_memory()` first thing.
"""
from __future__ import annotations

import ctypes

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_ARENA_MAX = -1, -3, -8  # glibc's mallopt parameters
KEEP = 1 << 30  # blocks up to 1 GiB come from the heap and stay there once freed


def keep_freed_memory() -> bool:
    """True when the allocator took the settings (glibc); elsewhere nothing changes."""
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc (macOS, musl): its allocator as it is
        return False
    return all([bool(mallopt(M_ARENA_MAX, 1)), bool(mallopt(M_MMAP_THRESHOLD, KEEP)),
                bool(mallopt(M_TRIM_THRESHOLD, KEEP))])
