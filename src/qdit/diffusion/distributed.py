"""Spreading work over ``torch.distributed`` ranks (``torchrun``): gloo on CPU, nccl on GPU.

One module for every distributed job of qdit, with one sharding rule (:func:`shard`: a contiguous,
balanced slice per rank):

* sampling: sample ``i`` is fully determined by ``(seed, i, labels[i])`` (see
  :mod:`qdit.diffusion.sampler`), so the indices are sharded over the ranks and gathered back on rank 0,
  and the result is the same as one process's;
* the search: candidates are evaluated in *rounds* of at most ``world_size`` items, each round sharded
  (so each rank evaluates at most one item of it), and the results are all-gathered, so every rank tells
  its search the same results in the same order as a single process would
  (:func:`evaluate_in_rounds`); the search state, written by rank 0 only, is the same too.

``torch.distributed`` is imported when a function needs it, so the search's modules stay light to import.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class DistContext:
    """This process's place among the ranks (``world_size == 1``: a single process, nothing is exchanged)."""

    rank: int = 0
    world_size: int = 1
    device: str = "cpu"
    initialized_here: bool = False  # init_distributed joined the group, so finalize leaves it

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @classmethod
    def current(cls, device: str = "cpu") -> DistContext:
        """The initialised default process group, or a single process."""
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return cls(dist.get_rank(), dist.get_world_size(), device)
        return cls(device=device)


def init_distributed(device: str | None = None) -> DistContext:
    """Join the process group when launched by ``torchrun`` (``WORLD_SIZE`` > 1); a no-op otherwise.

    With CUDA available and ``device`` unset or a CUDA device, each rank takes the GPU of its local rank
    and the group uses nccl; otherwise the ranks run on the CPU over gloo.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext(device=device or "cpu")
    import torch
    import torch.distributed as dist

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


def shard(items: Sequence[T], rank: int, world_size: int) -> list[T]:
    """The contiguous, balanced shard of ``items`` for ``rank`` (sizes differ by at most one; in rank order
    the shards are ``items`` again)."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} out of range for world size {world_size}")
    n = len(items)
    return list(items[rank * n // world_size : (rank + 1) * n // world_size])


def rounds(num_items: int, world_size: int) -> list[list[int]]:
    """Item indices grouped into rounds of at most ``world_size`` items (each rank evaluates at most one
    item of a round: its :func:`shard`)."""
    if world_size < 1:
        raise ValueError(f"world size must be >= 1, got {world_size}")
    return [list(range(s, min(s + world_size, num_items))) for s in range(0, num_items, world_size)]


def gather_to_main(obj: object, ctx: DistContext) -> list[object] | None:
    """Objects of all ranks, in rank order, on rank 0 (``None`` elsewhere)."""
    if not ctx.active:
        return [obj]
    import torch.distributed as dist

    out: list[object] | None = [None] * ctx.world_size if ctx.is_main else None
    dist.gather_object(obj, out, dst=0)
    return out


def all_gather(obj: Any, ctx: DistContext) -> list[Any]:
    """Objects of all ranks, in rank order, on every rank."""
    if not ctx.active:
        return [obj]
    import torch.distributed as dist

    out: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast(obj: Any, ctx: DistContext) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not ctx.active:
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(ctx: DistContext) -> None:
    if ctx.active:
        import torch.distributed as dist

        dist.barrier()


def finalize(ctx: DistContext) -> None:
    """Leave the process group if :func:`init_distributed` joined it."""
    if not ctx.initialized_here:
        return
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def evaluate_in_rounds(
    items: Sequence[T],
    fn: Callable[[T], R],
    on_result: Callable[[T, R], None],
    ctx: DistContext | None = None,
) -> None:
    """``on_result(item, fn(item))`` for every item in order, ``fn`` spread over the ranks.

    ``on_result`` runs on every rank right after each round, so state can be saved after every
    round (after every evaluation in a single process).
    """
    ctx = ctx or DistContext()
    for idx in rounds(len(items), ctx.world_size):
        mine = [fn(items[i]) for i in shard(idx, ctx.rank, ctx.world_size)]
        results = [r for part in all_gather(mine, ctx) for r in part]  # rank order = item order
        for i, res in zip(idx, results):
            on_result(items[i], res)
