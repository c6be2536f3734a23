"""The head alone at the spec's sizes (2,048 tokens, dim 64, 69,830 words): its training step
(loss and both gradients), the same with a frozen head (h's gradient only) and its statistics
pass, three ways, alone and beside a neighbour:

- rows: whole rows of 128 tokens (the head before tiles; run.head_tiles = "rows");
- tiles: blocks of tokens × words (tiled.py; --tiles, else each kind's probe pick);
- materialised: the textbook way, F.cross_entropy(h @ W.T, y) and its backward, softmax.

    python bench/bench_head.py [--threads 2] [--repeats 5] [--precision fp32 bf16]
                               [--tiles 1024x1024] [--neighbour] [--profile TILES]

Each figure: milliseconds per call, the median of the repeats after one warm-up, with the
spread (min–max). --neighbour runs everything twice: alone, then with a second process that
streams a 64 MB buffer (twice L3) through memory, started and stopped here. On a 2-core
machine the neighbour takes core 1, so both rounds run on core 0 with one thread (the head's
own loss of a core is not what is measured, its cache and memory sharing is). The rate of
1024³ matrix products is printed first: hosts differ, and the ratio is the point.
--profile TILES: instead, where one fp32 training step in TILES spends its time
(torch.profiler, self time by op), the Python loop's own share among them.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

from ashem_engine.head import Tiles, exit_stats, head_loss
from ashem_engine.memory import keep_freed_memory
from ashem_engine.tile_probe import probe

N, DIM, VOCAB = 2048, 64, 69830
NEIGHBOUR = """
import numpy as np
a = np.ones(16 << 20, dtype=np.float32); b = np.empty_like(a)  # 64 MB each
while True:
    np.copyto(b, a); np.copyto(a, b)
"""


def timed(fn, repeats: int) -> list[float]:
    fn()
    out = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        out.append((time.perf_counter() - started) * 1000)
    return out


def matmul_rate(dtype) -> float:
    a, b = torch.randn(1024, 1024, dtype=dtype), torch.randn(1024, 1024, dtype=dtype)
    seconds = min(timed(lambda: a @ b, 5)) / 1000
    return 2 * 1024 ** 3 / seconds / 1e9


def calls(h, w, y, tiles_of: dict, low: bool) -> dict:
    """name -> a call: three kinds of work, each three ways."""
    def step(way, frozen=False):
        hh, ww = h.clone().requires_grad_(), w if frozen else w.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=low, cache_enabled=False):
            loss = F.cross_entropy(hh @ ww.T, y) if way == "materialised" else \
                head_loss(hh, ww, y, tiles=tiles_of[way]["frozen" if frozen else "step"])
        loss.backward()

    def stats(way):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=low, cache_enabled=False):
            if way == "materialised":
                p = (h @ w.T).float().softmax(1)
                return p.amax(1), p.argmax(1) == y
            return exit_stats(h, w, y, tiles=tiles_of[way]["stats"])

    out = {}
    for way in ("rows", "tiles", "materialised"):
        out[f"training step · {way}"] = lambda way=way: step(way)
        out[f"frozen-head step · {way}"] = lambda way=way: step(way, frozen=True)
        out[f"statistics · {way}"] = lambda way=way: stats(way)
    return out


def measure(work: dict, repeats: int) -> dict:
    return {name: timed(fn, repeats) for name, fn in work.items()}


def with_neighbour(fn):
    neighbour = subprocess.Popen([sys.executable, "-c", NEIGHBOUR])
    try:
        if hasattr(os, "sched_setaffinity") and os.cpu_count() >= 2:
            os.sched_setaffinity(neighbour.pid, {1})
        time.sleep(1.0)  # its buffers allocated and streaming
        return fn()
    finally:
        neighbour.kill()
        neighbour.wait()


def report(title: str, results: dict, baseline: dict | None = None) -> None:
    print(title)
    for name, ms in results.items():
        median = statistics.median(ms)
        line = f"  {name:<34} {median:8.0f} ms  ({min(ms):.0f}–{max(ms):.0f})"
        if name.endswith("· tiles"):
            rows = statistics.median(results[name.replace("tiles", "rows")])
            line += f"  rows / tiles {rows / median:.2f}×"
        if baseline is not None:
            line += f"  vs alone {median / statistics.median(baseline[name]):.2f}×"
        print(line)


def profile_step(h, w, y, tiles: Tiles) -> None:
    from torch.profiler import ProfilerActivity, profile

    def step():
        hh, ww = h.clone().requires_grad_(), w.clone().requires_grad_()
        head_loss(hh, ww, y, tiles=tiles).backward()

    step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        started = time.perf_counter()
        step()
        wall = (time.perf_counter() - started) * 1000
    print(f"one fp32 training step in {tiles}: {wall:.0f} ms under the profiler")
    for e in sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:12]:
        print(f"  {e.key:<24} {e.count:6d} calls {e.self_cpu_time_total / 1e3:8.1f} ms")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--precision", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    ap.add_argument("--tiles", help="TOKENSxWORDS for every kind (default: the probe's picks)")
    ap.add_argument("--profile", metavar="TILES", help="profile one fp32 step in TILES instead")
    ap.add_argument("--neighbour", action="store_true",
                    help="also beside a process streaming memory on core 1 (1 thread, core 0)")
    args = ap.parse_args()
    keep_freed_memory()
    threads = 1 if args.neighbour else args.threads
    if args.neighbour and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {0})
    torch.set_num_threads(threads)
    print(f"{threads} thread(s); 1024³ products: fp32 {matmul_rate(torch.float32):.0f}, "
          f"bf16 {matmul_rate(torch.bfloat16):.0f} GFLOP/s; torch {torch.__version__}, "
          f"{torch.backends.cpu.get_cpu_capability()}")
    torch.manual_seed(0)
    h, w = torch.randn(N, DIM), torch.randn(VOCAB, DIM) * 0.125
    y = torch.randint(0, VOCAB, (N,))
    if args.profile:
        return profile_step(h, w, y, Tiles.parse(args.profile))
    for precision in args.precision:
        low = precision == "bf16"
        if args.tiles:
            picked = {k: Tiles.parse(args.tiles) for k in ("step", "frozen", "stats")}
        else:
            found, _ = probe(DIM, VOCAB, (N,), low)
            picked = {"step": found.step, "frozen": found.stats, "stats": found.stats}
        tiles_of = {"rows": {k: Tiles(128) for k in picked}, "tiles": picked}
        print(f"{precision}: tiles {', '.join(f'{k} {v}' for k, v in picked.items())}")
        work = calls(h, w, y, tiles_of, low)
        alone = measure(work, args.repeats)
        report(f"{precision}, alone", alone)
        if args.neighbour:
            report(f"{precision}, beside the neighbour", with_neighbour(
                lambda: measure(work, args.repeats)), alone)


if __name__ == "__main__":
    main()
