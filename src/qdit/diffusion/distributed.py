"""Spreading work over ``torch.distributed`` ranks (``torchrun``): gloo on CPU, nccl on GPU.

Sample ``i`` is fully determined by ``(seed, i, labels[i])`` (see :mod:`qdit.diffusion.sampler`), so
sharding the indices over ranks and gathering them back gives the same result as one process.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    device: str = "cpu"
    initialized_here: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str | None = None) -> DistContext:
    """Join the process group when launched by ``torchrun`` (``WORLD_SIZE`` > 1); a no-op otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext(device=device or "cpu")
    rank = int(os.environ["RANK"])
    local = int(os.environ.get("LOCAL_RANK", rank))
    use_cuda = torch.cuda.is_available() and (device is None or device.startswith("cuda"))
    dev = f"cuda:{local}" if use_cuda else "cpu"
    if use_cuda:
        torch.cuda.set_device(local)
    here = False
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
        here = True
    return DistContext(rank=rank, world_size=world, device=dev, initialized_here=here)


def shard(items: Sequence[int], rank: int, world_size: int) -> list[int]:
    """Contiguous, balanced shard of ``items`` for ``rank`` (sizes differ by at most one)."""
    n = len(items)
    start = rank * n // world_size
    stop = (rank + 1) * n // world_size
    return list(items[start:stop])


def gather_to_main(obj: object, ctx: DistContext) -> list[object] | None:
    """Objects of all ranks, in rank order, on rank 0 (``None`` elsewhere)."""
    if not ctx.active:
        return [obj]
    out: list[object] | None = [None] * ctx.world_size if ctx.is_main else None
    dist.gather_object(obj, out, dst=0)
    return out


def all_gather(obj: object, ctx: DistContext) -> list[object]:
    if not ctx.active:
        return [obj]
    out: list[object] = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def barrier(ctx: DistContext) -> None:
    if ctx.active:
        dist.barrier()


def finalize(ctx: DistContext) -> None:
    if ctx.initialized_here and dist.is_initialized():
        dist.destroy_process_group()
