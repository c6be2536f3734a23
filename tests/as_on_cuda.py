"""`python -m as_on_cuda ARGS` under torchrun: ashem-engine ARGS as it runs on CUDA machines,
on CPUs. The process group is joined as `join("cuda")` joins it, with gloo standing in for the
backend ashem asks for, and every collective first checks NCCL's device rule: a group made
as "nccl" serves CUDA tensors only ("No backend type associated with device type cpu"), one
made as "cpu:gloo,cuda:nccl" serves both. On a CPU every tensor is a CPU tensor, so a
collective that would reach a plain NCCL group with a host tensor fails here as it would
there. The backend asked for is printed on stderr ("asked for backend ...")."""
from __future__ import annotations

import sys

import torch
import torch.distributed as dist

SERVED = {"gloo": {"cpu", "cuda"}, "nccl": {"cuda"}}
asked: dict = {}  # process group (None: the default) -> the backend ashem asked for


def served(backend: str) -> set:
    if ":" not in backend:
        return SERVED[backend]
    return {pair.split(":")[0] for pair in backend.split(",")}


def check(tensors, group) -> None:
    backend = asked.get(group, asked[None])
    for t in tensors if isinstance(tensors, (list, tuple)) else [tensors]:
        if isinstance(t, torch.Tensor) and t.device.type not in served(backend):
            raise RuntimeError(f"No backend type associated with device type {t.device.type} "
                               f"(a group made as {backend!r})")


def checked(collective):
    def call(*args, group=None, **kwargs):
        for arg in args[:2]:
            check(arg, group)
        return collective(*args, group=group, **kwargs)
    return call


def install() -> None:
    real_init, real_new_group = dist.init_process_group, dist.new_group

    def init(backend=None, **kwargs):
        asked[None] = backend
        print(f"asked for backend {backend}", file=sys.stderr)
        return real_init("gloo", **kwargs)

    def new_group(*args, backend=None, **kwargs):
        group = real_new_group(*args, backend="gloo", **kwargs)
        asked[group] = backend or asked[None]
        return group

    dist.init_process_group, dist.new_group = init, new_group
    for name in ("all_reduce", "broadcast", "all_gather", "reduce", "gather", "scatter",
                 "all_to_all_single", "reduce_scatter_tensor", "all_gather_into_tensor"):
        setattr(dist, name, checked(getattr(dist, name)))
    torch.cuda.set_device = lambda device: None

    import ashem_engine.dist as ashem_dist
    import ashem_engine.run as ashem_run

    real_join = ashem_dist.join

    def join_as_on_cuda(device, *args, **kwargs):
        if dist.is_initialized():
            return ashem_dist.World.current()
        with_cuda = torch.cuda.is_available
        torch.cuda.is_available = lambda: True  # join decides by device "auto" or "cuda"
        try:
            return real_join("cuda", *args, **kwargs)
        finally:
            torch.cuda.is_available = with_cuda
    ashem_dist.join = ashem_run.join = join_as_on_cuda


if __name__ == "__main__":
    install()
    from ashem_engine.__main__ import main

    sys.exit(main(sys.argv[1:]))
