"""The process group a checkpoint verb runs under (none: one process), and the two collectives it uses.

Shared by the DCP save/load (:mod:`.dcp`) and the remote fetch every rank does (:mod:`.remote`).
"""

from __future__ import annotations

from typing import Any


def process_group() -> tuple[Any, int, int]:
    """(torch.distributed or None, rank, world size)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist, dist.get_rank(), dist.get_world_size()
    return None, 0, 1


def broadcast(dist: Any, value: Any) -> Any:
    """``value`` as rank 0 has it, on every rank."""
    if dist is None:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_gather(dist: Any, value: Any, world: int) -> list[Any]:
    """Every rank's ``value``, in rank order, on every rank."""
    if dist is None:
        return [value]
    out: list[Any] = [None] * world
    dist.all_gather_object(out, value)
    return out
