"""Several processes training one model (``torch.distributed``): who is who, and waiting."""

from __future__ import annotations

from typing import Any

import torch


def barrier() -> None:
    """``torch.distributed.barrier()`` when several processes train together; else nothing."""
    if rank_and_world()[1] > 1:
        torch.distributed.barrier()


def broadcast_from_main(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (a picklable object); ``obj`` itself in one process."""
    if rank_and_world()[1] == 1:
        return obj
    box = [obj]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def rank_and_world() -> tuple[int, int]:
    """(rank, world size); (0, 1) without an initialised process group."""
    d = torch.distributed
    if d.is_available() and d.is_initialized():
        return d.get_rank(), d.get_world_size()
    return 0, 1
