"""Bytes this process holds for the model's parameters and the optimizer's state: what tensor parallel and the
sharding stages divide, measured per rank (logged after the first step, read by benchmarks/parallel_memory.py)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

WRAPPERS = ("_inner_opt", "_optim")  # fleet's hybrid/sharding optimizers and group_sharded's stage-2 optimizer


def _bytes(tensor: Any) -> int:
    if tensor is None or not tensor._is_initialized():
        return 0
    return int(tensor._numel()) * tensor.element_size()


def optimizer_chain(optimizer: Any) -> Iterator[Any]:
    """`optimizer` and every optimizer it wraps (fleet's and group_sharded's wrappers), outermost first."""
    seen: set[int] = set()
    while optimizer is not None and id(optimizer) not in seen:
        seen.add(id(optimizer))
        yield optimizer
        optimizer = next((getattr(optimizer, a) for a in WRAPPERS if getattr(optimizer, a, None) is not None), None)


def innermost_optimizer(optimizer: Any) -> Any:
    """The Paddle optimizer that owns the state, under fleet's and group_sharded's wrappers."""
    chain = list(optimizer_chain(optimizer))
    return chain[-1] if chain else optimizer


def optimizer_state_bytes(optimizer: Any) -> int:
    """Bytes of the optimizer's accumulators (moments, beta powers) and master weights held by this process; a
    sharded optimizer holds only those of the parameters its rank updates."""
    inner = innermost_optimizer(optimizer)
    total = sum(_bytes(t) for per_param in getattr(inner, "_accumulators", {}).values() for t in per_param.values())
    return total + sum(_bytes(t) for t in getattr(inner, "_master_weights", {}).values())


def parameter_bytes(model: Any) -> int:
    """Bytes of the parameters this process holds: a sharding stage-3 parameter counts its local slice
    (`fw_storage`), a tensor-parallel one its split shape."""
    total = 0
    for param in model.parameters():
        storage = getattr(param, "fw_storage", None)
        total += _bytes(storage) if storage is not None else _bytes(param)
    return total
