"""Several processes under torchrun: PyTorch's own distributed stack (DESIGN.md).

`join(device)` sets up torch.distributed when torchrun started this process; `World.current()`
reads the group back, so a single process needs nothing and changes nothing. Training batches
are split across ranks (DistributedDataParallel); a pass over a split gives each rank a
contiguous share of the batches (and keeps its hidden states), and gathers the few numbers per
token a decision needs in batch order, so every rank decides as one process would. Rank 0
alone writes the run directory and sends what it reads back: no rank reads another's files."""
from __future__ import annotations

import math
import os
import re
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable, Iterator, Optional

import torch
import torch.distributed as dist

# How long a collective waits for a rank that stopped answering, unless run.peer_timeout_s
# says otherwise; a rank that died is noticed at once (its sockets close).
TIMEOUT_S = 300


class PeerLost(Exception):
    """Another process of this run ended or stopped answering. str(error) is one line."""

    def __init__(self, detail: str):
        super().__init__(f"another process of this run ended or stopped answering ({detail}); "
                         "what was finished is kept: go on with ashem-engine resume RUN_DIR")


def lost_peer(e: Exception) -> bool:
    """A collective failed because a rank died or hung (gloo's and NCCL's RuntimeErrors say so)."""
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
        """Whether this process is one of a process group (torchrun's, even of one)."""
        return self.size > 1 or self.backend != "none"

    @property
    def node_lead(self) -> bool:
        """The first process on its machine (LOCAL_RANK 0): it writes what a node shares."""
        return int(os.environ.get("LOCAL_RANK", "0")) == 0

    def share(self, n: int, rank: Optional[int] = None) -> range:
        """A rank's contiguous block of n items; the first n % size ranks take one more."""
        rank = self.rank if rank is None else rank
        base, extra = divmod(n, self.size)
        start = rank * base + min(rank, extra)
        return range(start, start + base + (rank < extra))

    def each_of_mine(self, n: int, check: Callable[[], None]) -> Iterator[int]:
        """This rank's share of n batches, `check()` before each step; every rank makes as many
        steps as rank 0 (the longest share), so that checks, collective under torchrun, pair up."""
        mine = self.share(n)
        for k in range(len(self.share(n, 0))):
            check()
            if k < len(mine):
                yield mine[k]

    def gather(self, local: torch.Tensor, n: int, per: int) -> torch.Tensor:
        """Every rank's `local` rows (its share of n items, `per` rows each) -> all, in order."""
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
        """Per-token rows of this rank's share of a split's data.Batches -> every batch's."""
        return self.gather(local, len(batches), batches.y[0].numel())

    def total(self, value: float, op: str = "SUM") -> float:
        """The sum of `value` over the ranks (float64); op "MAX": the largest of them."""
        if not self.parallel:
            return value
        t = torch.tensor([value], dtype=torch.float64)
        dist.all_reduce(t, op=getattr(dist.ReduceOp, op))
        return float(t[0])

    def max(self, value: float) -> float:
        return self.total(value, "MAX")

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """`tensor` summed over the ranks, on its own device (no host wait on a GPU)."""
        if self.parallel:
            dist.all_reduce(tensor)
        return tensor

    def from_lead(self, obj: Any) -> Any:
        """Rank 0's `obj` on every rank (a run directory's path, ...)."""
        if not self.parallel:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def lead_reads(self, read: Callable[[], Any]) -> Any:
        """What `read()` gives on rank 0, on every rank: a file rank 0 wrote is read there and sent,
        so the nodes of a run need no shared disk. What rank 0 raises, every rank raises."""
        if not self.parallel:
            return read()
        box: list = [None]
        if self.lead:
            try:
                box = [(True, read())]
            except Exception as e:  # noqa: BLE001 - raised again on every rank below
                box = [(False, e)]
        dist.broadcast_object_list(box, src=0)
        ok, value = box[0]
        if not ok:
            raise value
        return value

    def exchange(self, rows: torch.Tensor, owned: range, wanted: torch.Tensor,
                 chunk: int = 1 << 16) -> torch.Tensor:
        """Rows of a table split across the ranks: this rank holds `rows`, the table's rows `owned`,
        and gets the rows `wanted` (table indices, in that order). Rows travel a chunk at a time:
        no rank holds more than its own rows, one chunk and the rows it wants."""
        wanted = wanted.to(rows.device)
        if not self.parallel:
            return rows[wanted - owned.start]
        bounds = torch.tensor([owned.start, owned.stop], dtype=torch.long)
        every = [torch.empty_like(bounds) for _ in range(self.size)]
        dist.all_gather(every, bounds)
        order = torch.argsort(wanted)
        in_order = wanted[order]
        out = rows.new_empty((len(wanted), *rows.shape[1:]))
        for rank, (start, stop) in enumerate(b.tolist() for b in every):
            for low in range(start, stop, chunk):
                high = min(low + chunk, stop)
                part = rows[low - start: high - start].contiguous() if rank == self.rank \
                    else rows.new_empty((high - low, *rows.shape[1:]))
                dist.broadcast(part, src=rank)
                a, b = torch.searchsorted(in_order, torch.tensor([low, high],
                                                                 device=rows.device)).tolist()
                out[order[a:b]] = part[in_order[a:b] - low]
        return out

    def barrier(self) -> None:
        if self.parallel:
            dist.barrier()


def launched_by_torchrun() -> bool:
    """torchrun started this process (also as its only process: a group of one, which runs
    every collective, such as a one-GPU check of the NCCL group)."""
    return "TORCHELASTIC_RUN_ID" in os.environ or int(os.environ.get("WORLD_SIZE", "1")) > 1


def backend_for(cuda: bool) -> str:
    """gloo on CPU; on CUDA, NCCL for CUDA tensors and gloo for CPU ones (a plain "nccl" group
    serves CUDA tensors only, and a run also sums host numbers and sends objects)."""
    return "cpu:gloo,cuda:nccl" if cuda else "gloo"


def join(device: str, timeout_s: float = TIMEOUT_S) -> World:
    """Joins the process group torchrun set up the environment for; one process: no-op.
    `timeout_s`: how long a collective waits for a rank that stopped answering."""
    if not launched_by_torchrun() or dist.is_initialized():
        return World.current()
    cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if cuda:
        # a timed-out or failed NCCL collective then ends its process (torchrun ends the
        # others) instead of leaving it blocked
        os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend_for(cuda), timeout=timedelta(seconds=timeout_s))
    return World.current()


def leave() -> None:
    """Leaves the process group; after a lost rank it may fail, which changes nothing."""
    if dist.is_available() and dist.is_initialized():
        try:
            dist.destroy_process_group()
        except Exception:  # noqa: BLE001 - the run's own result is what gets reported
            pass


class SharedControl:
    """Rank 0's RunControl decides at every stage boundary and every `every`-th batch boundary,
    and every rank obeys (go on, or cancel). The decision travels on a gloo group of its own with
    the run's peer timeout; while rank 0 holds it says so every few seconds, so only a rank that
    stopped answering runs a wait out."""

    HOLDING = 2.0  # a decision's first number: 0 go on, 1 cancel, 2 still holding

    def __init__(self, control: Any, world: World, timeout_s: float = TIMEOUT_S,
                 every: int = 1):
        self.control, self.world, self.every, self.calls = control, world, every, 0
        self.group = dist.new_group(backend="gloo", timeout=timedelta(seconds=timeout_s))
        self.heartbeat_s = min(10.0, timeout_s / 4)

    OWN = ("control", "world", "group", "every", "calls", "heartbeat_s")

    def __getattr__(self, name: str) -> Any:  # pause_at, on_pause, ... of rank 0's control
        return getattr(self.control, name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in self.OWN:
            object.__setattr__(self, name, value)
        else:
            setattr(self.control, name, value)

    def checkpoint(self, where: str) -> None:
        self.calls += 1
        if self.calls % self.every == 0:
            self._agree(where, lambda: self.control.checkpoint(where))

    def boundary(self, name: str, where: str) -> None:
        self._agree(where, lambda: self.control.boundary(name, where))

    def _agree(self, where: str, decide) -> None:
        """Rank 0 decides (holding, obeying commands, steering); then every rank learns
        whether to cancel and which hard ratio was steered to last (NaN: none)."""
        from .control import Cancelled

        decision = torch.tensor([0.0, math.nan], dtype=torch.float64)
        if self.world.lead:
            self._decide(decide, decision)
        else:
            self._await(decision)
        if not self.world.lead and not math.isnan(decision[1]) and self.control.steering:
            self.control.steering(float(decision[1]))()  # what rank 0 applied
        if decision[0]:
            raise Cancelled(where)

    def _decide(self, decide, decision: torch.Tensor) -> None:
        from .control import Cancelled

        steered, beat = self._recording_steering(), self._heartbeat()
        self.control.on_wait = beat
        try:
            decide()
        except Cancelled:
            decision[0] = 1.0
        finally:
            self.control.steering, self.control.on_wait = steered.pop(0), None
        if steered:
            decision[1] = steered[-1]
        dist.broadcast(decision, src=0, group=self.group)

    def _heartbeat(self) -> Callable[[], None]:
        """What rank 0 calls while it holds: every heartbeat_s, "still holding"."""
        last = [time.monotonic()]

        def beat() -> None:
            if time.monotonic() - last[0] >= self.heartbeat_s:
                dist.broadcast(torch.tensor([self.HOLDING, math.nan], dtype=torch.float64),
                               src=0, group=self.group)
                last[0] = time.monotonic()
        return beat

    def _await(self, decision: torch.Tensor) -> None:
        dist.broadcast(decision, src=0, group=self.group)
        while decision[0] == self.HOLDING:
            dist.broadcast(decision, src=0, group=self.group)

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
