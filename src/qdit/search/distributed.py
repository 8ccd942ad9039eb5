"""Candidate evaluation spread over ``torch.distributed`` ranks.

Work items are processed in *rounds* of ``world`` items: in a round, rank ``r`` evaluates item
``r``; the results are all-gathered, and every rank sees all of them in item order, so a run over
``w`` ranks tells its search the same results in the same order as a single process would (and the
search state, written by rank 0 only, is the same).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")
R = TypeVar("R")


def rounds(num_items: int, world: int) -> list[list[int]]:
    """Item indices grouped into rounds of at most ``world`` items (rank ``r`` takes position ``r``)."""
    if world < 1:
        raise ValueError(f"world size must be >= 1, got {world}")
    return [list(range(s, min(s + world, num_items))) for s in range(0, num_items, world)]


def shard(num_items: int, rank: int, world: int) -> list[int]:
    """The items that ``rank`` evaluates out of ``num_items``: ``rank, rank + world, ...``."""
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} out of range for world size {world}")
    return list(range(rank, num_items, world))


@dataclass(frozen=True)
class Dist:
    """This process's place among the ranks (``world == 1``: a single process, nothing is gathered)."""

    rank: int = 0
    world: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def current(cls) -> Dist:
        """The initialised default process group, or a single process."""
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return cls(dist.get_rank(), dist.get_world_size())
        return cls()

    @classmethod
    def from_env(cls, backend: str = "gloo") -> Dist:
        """Join the process group that ``torchrun`` describes in the environment (if any)."""
        import torch.distributed as dist

        if int(os.environ.get("WORLD_SIZE", "1")) > 1 and dist.is_available() and not dist.is_initialized():
            dist.init_process_group(backend=backend)
        return cls.current()

    def gather(self, obj: Any) -> list[Any]:
        if self.world == 1:
            return [obj]
        import torch.distributed as dist

        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        if self.world == 1:
            return obj
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()


def evaluate_in_rounds(
    items: Sequence[T],
    fn: Callable[[T], R],
    on_result: Callable[[T, R], None],
    dist: Dist | None = None,
) -> None:
    """``on_result(item, fn(item))`` for every item in order, ``fn`` spread over the ranks.

    ``on_result`` runs on every rank right after each round, so state can be saved after every
    round (after every evaluation in a single process).
    """
    dist = dist or Dist()
    for idx in rounds(len(items), dist.world):
        mine = fn(items[idx[dist.rank]]) if dist.rank < len(idx) else None
        results = dist.gather(mine)
        for i, res in zip(idx, results):
            on_result(items[i], res)
