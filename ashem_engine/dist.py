"""Several processes under torchrun: PyTorch's own distributed stack (DESIGN.md).

`join(device)` sets up torch.distributed when torchrun started this process (WORLD_SIZE > 1):
gloo on CPU, NCCL on CUDA. `World.current()` reads the process group back, so a single
process needs nothing and changes nothing. Training batches are split across ranks
(stages.py, DistributedDataParallel); the passes over a split (mining, validation, the final
evaluation, the sweep) give each rank a contiguous share of the batches and gather the
per-token results in batch order, so every rank then holds exactly what one process would,
and a threshold is the quantile over the whole split. Rank 0 alone writes the run directory.
"""
from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable, Iterator, Optional

import torch
import torch.distributed as dist

# A collective waits at most this long for a rank that stopped answering; a rank that died
# is noticed at once (its sockets close).
TIMEOUT_S = 30


class PeerLost(Exception):
    """Another process of this run ended or stopped answering. str(error) is one line."""

    def __init__(self, detail: str):
        super().__init__(f"another process of this run ended or stopped answering ({detail}); "
                         "what was finished is kept: go on with ashem-engine resume RUN_DIR")


def lost_peer(e: Exception) -> bool:
    """A collective failed because a rank died or hung (gloo and NCCL raise RuntimeError
    subclasses, naming themselves)."""
    text = f"{type(e).__module__} {type(e).__name__} {e}".lower()
    return isinstance(e, RuntimeError) and any(
        word in text for word in ("gloo", "nccl", "connection", "timed out", "distbackend"))


def peer_detail(e: Exception) -> str:
    """The first sentence of a backend's error, without its source location."""
    first = (str(e).splitlines() or [type(e).__name__])[0]
    return re.sub(r"^\[[^\]]*\]\s*", "", first).split(". ")[0].rstrip(".")


def stop_on_terminate() -> None:
    """torchrun ends every process of a run with SIGTERM once one of them has died: end as a
    failure (an event, one line, files kept), not as a silent kill."""
    import signal

    def on_terminate(signum, frame):
        raise PeerLost("torchrun stopped this process")

    signal.signal(signal.SIGTERM, on_terminate)


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    backend: str = "none"

    @classmethod
    def current(cls) -> "World":
        if dist.is_available() and dist.is_initialized():
            return cls(dist.get_rank(), dist.get_world_size(), str(dist.get_backend()))
        return cls()

    @property
    def lead(self) -> bool:
        """Rank 0: the one process that writes the run directory and the events."""
        return self.rank == 0

    @property
    def parallel(self) -> bool:
        return self.size > 1

    def share(self, n: int, rank: Optional[int] = None) -> range:
        """A rank's contiguous block of n items; the first n % size ranks take one more."""
        rank = self.rank if rank is None else rank
        base, extra = divmod(n, self.size)
        start = rank * base + min(rank, extra)
        return range(start, start + base + (rank < extra))

    def each_of_mine(self, n: int, check: Callable[[], None]) -> Iterator[int]:
        """This rank's share of n batches, `check()` before each step. Every rank makes as
        many steps as rank 0 (whose share is the longest), so that checks, collective under
        torchrun, pair up; in one process: check, batch i, for every i."""
        mine = self.share(n)
        for k in range(len(self.share(n, 0))):
            check()
            if k < len(mine):
                yield mine[k]

    def gather(self, local: torch.Tensor, n: int, per: int) -> torch.Tensor:
        """Every rank's `local` rows (its share of n items, `per` rows each) -> all n * per
        rows in item order, on every rank."""
        if not self.parallel:
            return local
        counts = [len(self.share(n, r)) * per for r in range(self.size)]
        wire = local.to(torch.uint8) if local.dtype == torch.bool else local
        padded = wire.new_zeros((max(counts), *wire.shape[1:]))
        padded[: len(wire)] = wire
        parts = [torch.empty_like(padded) for _ in counts]
        dist.all_gather(parts, padded)
        out = torch.cat([part[:count] for part, count in zip(parts, counts)])
        return out.to(local.dtype)

    def gather_tokens(self, local: torch.Tensor, batches: Any) -> torch.Tensor:
        """Per-token rows of this rank's share of a split's batches -> every batch's, in
        order (`batches`: a data.Batches)."""
        return self.gather(local, len(batches), batches.y[0].numel())

    def total(self, value: float) -> float:
        """The sum of `value` over the ranks (float64)."""
        if not self.parallel:
            return value
        t = torch.tensor([value], dtype=torch.float64)
        dist.all_reduce(t)
        return float(t[0])

    def from_lead(self, obj: Any) -> Any:
        """Rank 0's `obj` on every rank (a run directory's path, ...)."""
        if not self.parallel:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.parallel:
            dist.barrier()


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def join(device: str) -> World:
    """Joins the process group torchrun set up the environment for; one process: no-op."""
    if not launched_by_torchrun() or dist.is_initialized():
        return World.current()
    cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if cuda else "gloo", timeout=timedelta(seconds=TIMEOUT_S))
    return World.current()


def leave() -> None:
    """Leaves the process group; after a lost rank it may fail, which changes nothing."""
    if dist.is_available() and dist.is_initialized():
        try:
            dist.destroy_process_group()
        except Exception:  # noqa: BLE001 - the run's own result is what gets reported
            pass


class SharedControl:
    """Rank 0's RunControl decides at every batch and stage boundary; every rank obeys the
    same decision there (go on, or cancel). The decision travels on a gloo group of its
    own with no practical time limit, so a run may stay paused for as long as its user
    likes; a rank that dies still closes its sockets, which the others notice at once."""

    def __init__(self, control: Any, world: World):
        self.control, self.world = control, world
        self.group = dist.new_group(backend="gloo", timeout=timedelta(days=7))

    def __getattr__(self, name: str) -> Any:  # pause_at, on_pause, ... of rank 0's control
        return getattr(self.control, name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in ("control", "world", "group"):
            object.__setattr__(self, name, value)
        else:
            setattr(self.control, name, value)

    def checkpoint(self, where: str) -> None:
        self._agree(where, lambda: self.control.checkpoint(where))

    def boundary(self, name: str, where: str) -> None:
        self._agree(where, lambda: self.control.boundary(name, where))

    def _agree(self, where: str, decide) -> None:
        """Rank 0 decides (holding, obeying commands, steering); then every rank learns
        whether to cancel and which hard ratio was steered to last (NaN: none)."""
        from .control import Cancelled

        decision = torch.tensor([0.0, math.nan], dtype=torch.float64)
        if self.world.lead:
            steered = self._recording_steering()
            try:
                decide()
            except Cancelled:
                decision[0] = 1.0
            finally:
                self.control.steering = steered.pop(0)
            if steered:
                decision[1] = steered[-1]
        dist.broadcast(decision, src=0, group=self.group)
        if not self.world.lead and not math.isnan(decision[1]) and self.control.steering:
            self.control.steering(float(decision[1]))()  # what rank 0 applied
        if decision[0]:
            raise Cancelled(where)

    def _recording_steering(self) -> list:
        """[rank 0's own steering, then each ratio it applies while deciding]."""
        own, record = self.control.steering, [self.control.steering]
        if own is not None:
            def steering(ratio: float):
                apply = own(ratio)

                def applied() -> None:
                    apply()
                    record.append(ratio)
                return applied
            self.control.steering = steering
        return record
