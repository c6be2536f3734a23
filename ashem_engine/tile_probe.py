"""run.head_tiles: the head's tiles for this machine, measured once and kept.

Whether whole rows of 128 tokens or blocks of tokens × words run the head faster depends on the
host's caches, its matrix kernels and what shares them (head.py, tiled.py), so "auto" times a
few candidates at the run's sizes on random data, a second or two each, and keeps the fastest
in the cache directory, keyed by everything the timing depends on: CPU model, torch and its
CPU capability, threads, dtype and the head's shape. A later run on the same machine reads the
choice back, so its figures are the same run after run; a setting names tiles explicitly."""
from __future__ import annotations

import json
import platform
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional

from .rundir import atomic_write_json

if TYPE_CHECKING:  # torch is loaded by a run, not by settings' validation
    import torch

    from .head import HeadTiles, Tiles

AUTO, ROWS = "auto", "rows"
PROBED, CACHED = "measured now", "measured earlier"  # where "auto" found its tiles
CACHE_FILE = "head-tiles.json"
SMALL_HEAD_BYTES = 1 << 20  # a weight this small stays in L2 whole: rows, no probe


def candidates(tokens: int) -> list[Tiles]:
    """Whole rows as before tiles, and three blocks of 256 K to 1 M logits (1 to 4 MB in
    fp32) that came out fastest at the spec's sizes on 2-core hosts (docs/REPRODUCTION.md)."""
    from .head import Tiles

    out = [Tiles(128)]
    for rows, words in ((2048, 256), (1024, 1024), (512, 1024)):
        if Tiles(min(rows, tokens), words) not in out:
            out.append(Tiles(min(rows, tokens), words))
    return out


def describe_setting(text: str) -> Optional[str]:
    """None when `text` is a valid run.head_tiles, else what is allowed."""
    if text in (AUTO, ROWS) or re.fullmatch(r"[1-9][0-9]*x([1-9][0-9]*|all)", text):
        return None
    return ('allowed: "auto" (measured on this machine), "rows" (whole rows of 128 tokens) '
            'or "TOKENSxWORDS", e.g. "1024x1024" ("128xall": whole rows of 128)')


def resolve(setting: str, device: torch.device, dim: int, vocab: int, sizes: tuple,
            low: bool, cache_dir: Path, clock: Callable[[], float] = time.perf_counter,
            probing: Callable[[], None] = lambda: None) -> tuple[HeadTiles, str]:
    """The tiles a run uses for head calls of `sizes` tokens (its batches: stage 1's, later
    stages' hard tokens), and where they came from: settings, small head, device, cache, or
    probe (`probing()` is called first: it takes seconds)."""
    from .head import HeadTiles, Tiles, default_chunk

    if setting not in (AUTO, ROWS):
        tiles = Tiles.parse(setting)
        return HeadTiles(tiles, tiles), "settings"
    if setting == ROWS or device.type != "cpu":  # no tile shape measured on a GPU yet
        rows = Tiles(default_chunk(device))
        return HeadTiles(rows, rows), "settings" if setting == ROWS else "device"
    if vocab * dim * 4 <= SMALL_HEAD_BYTES:
        rows = Tiles(default_chunk(device))
        return HeadTiles(rows, rows), "small head"
    sizes = tuple(sorted(set(sizes), reverse=True))
    key = cache_key(dim, vocab, sizes, low)
    path = cache_dir / CACHE_FILE
    known = _read(path)
    if key in known:
        return _parsed(known[key]), CACHED
    probing()
    found, timings = probe(dim, vocab, sizes, low, clock)
    known[key] = {**found.describe(), "ms": timings}
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, known)
    except OSError:
        pass  # an unwritable cache costs the next run another probe, nothing else
    return found, PROBED


def known_or_rows(device, dim: int, vocab: int, sizes: tuple, low: bool, cache_dir: Path
                  ) -> tuple[HeadTiles, str]:
    """"auto" without a probe: the cached choice, else whole rows (so that processes that
    share a machine neither time each other nor choose apart)."""
    from .head import HeadTiles, Tiles, default_chunk

    sizes = tuple(sorted(set(sizes), reverse=True))
    known = _read(cache_dir / CACHE_FILE).get(cache_key(dim, vocab, sizes, low))
    if device.type == "cpu" and known is not None:
        return _parsed(known), CACHED
    rows = Tiles(default_chunk(device))
    return HeadTiles(rows, rows), "rows: nothing measured on this machine yet"


def _parsed(entry: dict) -> HeadTiles:
    from .head import HeadTiles, Tiles

    smaller = entry.get("smaller")
    return HeadTiles(Tiles.parse(entry["step"]), Tiles.parse(entry["stats"]),
                     entry.get("tokens", 0), None if smaller is None else _parsed(smaller))


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cache_key(dim: int, vocab: int, sizes: tuple, low: bool) -> str:
    import torch

    return json.dumps([cpu_model(), torch.__version__, torch.backends.cpu.get_cpu_capability(),
                       torch.get_num_threads(), "bf16" if low else "fp32", dim, vocab,
                       list(sizes)])


def _read(path: Path) -> dict:
    try:
        known = json.loads(path.read_text())
        return known if isinstance(known, dict) else {}
    except (OSError, ValueError):
        return {}


def probe(dim: int, vocab: int, sizes: tuple, low: bool,
          clock: Callable[[], float] = time.perf_counter) -> tuple[HeadTiles, dict]:
    """Times every candidate's training step and statistics pass (once after a warm-up) on
    random data of each size (largest first); returns the fastest of each kind at each size,
    and the times by size."""
    from .head import HeadTiles, Tiles

    tiles, timings = None, {}
    for tokens in sorted(set(sizes)):
        times = _timings(dim, vocab, tokens, low, clock)
        fastest = {kind: min(ms, key=ms.get) for kind, ms in times.items()}
        tiles = HeadTiles(Tiles.parse(fastest["step"]), Tiles.parse(fastest["stats"]),
                          tokens, tiles)
        timings[str(tokens)] = times
    if tiles.smaller is None:
        tiles = HeadTiles(tiles.step, tiles.stats)  # one size: for every call
    return tiles, timings


def _timings(dim: int, vocab: int, tokens: int, low: bool, clock) -> dict:
    import torch

    from .head import exit_stats, head_loss

    g = torch.Generator().manual_seed(0)
    h = torch.randn(tokens, dim, generator=g)
    w = torch.randn(vocab, dim, generator=g) * dim ** -0.5
    y = torch.randint(0, vocab, (tokens,), generator=g)

    def step(tiles):
        hh, ww = h.clone().requires_grad_(), w.clone().requires_grad_()
        head_loss(hh, ww, y, tiles=tiles).backward()

    timings: dict = {"step": {}, "stats": {}}
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=low, cache_enabled=False):
        for tiles in candidates(tokens):
            timings["step"][str(tiles)] = _best_ms(lambda: step(tiles), clock)
            timings["stats"][str(tiles)] = _best_ms(lambda: exit_stats(h, w, y, tiles=tiles),
                                                    clock)
    return timings


def _best_ms(fn, clock, repeats: int = 1) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        started = clock()
        fn()
        best = min(best, clock() - started)
    return round(best * 1000, 1)
