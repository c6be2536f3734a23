"""The C allocator, tuned once per process for a training loop's big temporaries.

glibc unmaps blocks over its mmap threshold on free, so every step's head gradient and logits
buffers (tens of MB) would come back as fresh pages to zero. Kept in the heap, in one arena for
every thread (the dashboard's worker too), they are reused and every figure stays the same
(docs/REPRODUCTION.md, "The C allocator"). Set before threads start: the commands call
`keep_freed_memory()` first thing."""
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
