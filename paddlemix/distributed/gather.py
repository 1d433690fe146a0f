"""Objects of every rank, for the reports that add up what each rank saw (eval losses, skipped samples)."""

from __future__ import annotations

from typing import Any


def gather_objects(obj: Any, world_size: int) -> list[Any]:
    """Every rank's `obj` (picklable) in rank order, over all processes; `[obj]` in one process. A collective:
    every rank must call it, in the same order as its other collectives."""
    if world_size <= 1:
        return [obj]
    import paddle.distributed as dist

    gathered: list[Any] = []
    dist.all_gather_object(gathered, obj)
    return gathered
