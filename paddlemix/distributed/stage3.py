"""Sharding stage 3's split parameters made whole again, so the model can be written.

Stage 3 (Paddle's `GroupShardedStage3`, `"sharding": "stage3"`) splits every parameter of more than its
`segment_size` (2^20 elements: in a real model the embeddings, the head and every large linear weight) over the
sharding ranks. Each rank keeps its slice of the flattened tensor, padded to a multiple of the degree, in
`param.fw_storage`; the parameter itself holds data only while its layer runs. Between steps such a parameter has
its shape but no data, and reading it gives an empty array, so the weights are gathered before they are written:

    rank 0: fw_storage = w.flatten()[0:k]        rank 1: fw_storage = w.flatten()[k:2k] (+ padding)
    whole:  concat(all ranks' slices)[:w.numel()] viewed as w.shape, on every rank
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


def splits_parameters(training: Any) -> bool:
    """Does this run (paddleformers' TrainingArguments) split parameters over ranks (sharding stage 3, degree > 1)?"""
    from paddleformers.trainer.trainer_utils import ShardingOption

    return training.sharding_parallel_size > 1 and ShardingOption.FULL_SHARD in (training.sharding or [])


def split_parameters(model: Any, trainable_only: bool = False) -> list[Any]:
    """The parameters of `model` stage 3 holds as slices right now (none outside stage 3), or only the trainable
    ones among them."""
    return [p for p in model.parameters() if getattr(p, "status", None) == "part" and
            getattr(p, "fw_storage", None) is not None and not (trainable_only and p.stop_gradient)]  # fmt: skip


@contextmanager
def whole_parameters(model: Any, trainable_only: bool = False, group: Any = None) -> Iterator[None]:
    """Within the block every parameter of `model` that stage 3 split (with `trainable_only`, every trainable one:
    a LoRA adapter's, not the frozen base's) holds its full value on every rank; after it they hold no data again,
    as stage 3 left them. Nothing happens when no such parameter is split.

    A collective over `group` (default: fleet's sharding group) when some parameter is split: every rank must
    enter the block, in the same order as its other collectives. Inside, each rank holds those weights whole, as
    one process does (paddleformers' own stage-3 save gathers the same).
    """
    split = split_parameters(model, trainable_only)
    if not split:
        yield
        return
    import paddle
    import paddle.distributed as dist

    if group is None:
        from paddle.distributed import fleet

        group = fleet.get_hybrid_communicate_group().get_sharding_parallel_group()
    with paddle.no_grad():
        for p in split:
            parts: list[Any] = []
            dist.all_gather(parts, p.fw_storage, group=group)  # each [padded numel / degree]
            whole = paddle.concat(parts)  # [padded numel]
            whole._slice(0, p._numel())._share_buffer_to(p)  # p keeps its shape, stage 3 shares its buffer alike
    try:
        yield
    finally:
        for p in split:
            p._clear_data()
