"""Sharding stage 3's split parameters made whole again, so the model can be written, and readied for
paddleformers' checkpoint save and load (`checkpoint_ready`, `keep_frozen_slices`, `loading_slices`).

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


def slice_whole_frozen(stage: Any) -> list[str]:
    """Put every split parameter that stage 3 (`stage`, a `GroupShardedStage3`) holds whole outside a layer's
    forward or backward back into its slice, as stage 3 keeps it between steps; returns their names.

    Why: the backward pass gathers each split parameter of a layer, and Paddle 3.3 releases it again from the
    parameter's gradient hook, which only trainable parameters have. A frozen split weight (a LoRA base weight, a
    frozen tower's) therefore stays whole on every rank from the first backward on (status "all", no slice).
    paddleformers' checkpoint save gathers every split parameter with `get_all_parameters`, which has nothing to
    gather for such a weight: it reuses a gathered copy left over from the backward pass at the first checkpoint
    and fails with a `KeyError` on the parameter's name at the second. No collective: each rank cuts its own
    slice (`[start, end)` of the flattened weight, zero-padded to the degree's multiple) from the whole value.
    """
    import paddle

    names = []
    with paddle.no_grad():
        for p in stage._layer.parameters():
            if getattr(p, "status", None) != "all" or p.name not in stage._param2buffer:
                continue
            start, end = stage._param2buffer[p.name][stage._rank]
            flat = p.detach().reshape([-1])  # [numel]
            padding = stage._param2buffer_size[p.name] - flat.shape[0]
            if padding > 0:
                flat = paddle.concat([flat, paddle.zeros([padding], dtype=flat.dtype)])  # [padded numel]
            p.fw_storage = flat._slice(start, end).clone()  # [padded numel / degree]
            if stage._offload:
                from paddle.distributed.fleet.meta_parallel.sharding import group_sharded_stage3

                p.fw_storage = group_sharded_stage3._device2cpu(p.fw_storage)
            p._clear_data()
            p.status, p.use_count = "part", 0
            stage._task_flow.full_param.pop(p.name, None)  # the backward's gathered copy, if one is left
            names.append(p.name)
    return names


@contextmanager
def checkpoint_ready(stage: Any) -> Iterator[None]:
    """Around paddleformers' checkpoint save under stage 3 (`stage` is the trainer's `model_wrapped`): before it,
    frozen split weights held whole go back to their slices (`slice_whole_frozen`) so that its gather finds every
    split parameter; after it, the whole values its gather (`get_all_parameters`) leaves on every split parameter
    of every rank are dropped, so a rank again holds only its slices, as between steps. Training then continues
    exactly as without the save (each layer's forward gathers its weights from the slices). Nothing happens for a
    model that is not wrapped by stage 3.
    """
    if not (hasattr(stage, "get_all_parameters") and hasattr(stage, "_param2buffer")):
        yield
        return
    slice_whole_frozen(stage)
    try:
        yield
    finally:
        for p in split_parameters(stage._layer):
            if p._is_initialized():
                p._clear_data()


def keep_frozen_slices(model: Any) -> list[str]:
    """On resume, let stage 3 keep the slices of the frozen split weights a LoRA checkpoint does not hold; returns
    their names.

    paddleformers resumes stage 3 in three moves: `init_slice_param` gives every split parameter a whole value of
    zeros, the checkpoint is loaded into those values, then `align_param_to_buffer_and_clear_slice_param` copies
    each parameter that holds a value into this rank's slice. A LoRA checkpoint holds only the trainable tensors,
    so the frozen base weights would be zeroed there. Called between the load and the copy, this drops their zero
    values, so their slices keep the base weights loaded from `model_name_or_path` at the start of the run.
    """
    names = []
    for p in split_parameters(model):
        if p.stop_gradient and p._is_initialized():
            p._clear_data()
            names.append(p.name)
    return names


@contextmanager
def loading_slices(stage: Any) -> Iterator[None]:
    """Around a flex-checkpoint load into a model stage 3 (`stage`, the trainer's `model_wrapped`) has split, as
    paddleformers' resume does it: before, every split parameter gets a whole value of zeros to load into, and the
    optimizer sees its slices under their checkpoint names; after, each rank copies its slice of the loaded values
    into the slices stage 3 computes with and drops the whole values. Without it a load after training (the best
    checkpoint of `load_best_model_at_end`) finds parameters without values and fails. Frozen split weights
    held whole go back to their slices first (`slice_whole_frozen`): the zeros would replace their values, and
    they would have no slice to copy into. Nothing happens for a model that is not wrapped by stage 3.
    """
    if not hasattr(stage, "align_param_to_buffer_and_clear_slice_param"):
        yield
        return
    slice_whole_frozen(stage)
    stage.init_slice_param()
    stage.init_optimizer_for_slice_param()
    yield
    stage.align_param_to_buffer_and_clear_slice_param()
