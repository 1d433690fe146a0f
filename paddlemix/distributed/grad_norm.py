"""The global L2 norm of a step's gradients, as one process would compute it, from any rank of a parallel run.

Each rank sums the squares of the gradients it holds for the step; the sums then go over the groups that divide
the gradients, and only those:

    tensor parallel   a split parameter's slices are summed over the tensor group; a replicated one (norms,
                      vision tower, projector) is the same on every tensor rank and counts once
    sharding          each rank counts the gradients it owns (stage 1 and 2: the parameters its optimizer updates,
                      reduced onto it before the update, stage 2's still to be divided by the degree; stage 3: its
                      slice of every parameter), summed over the sharding group
    pipeline          each stage counts its layers (a tied weight on its first stage only), summed over the group
    data parallel     gradients are already averaged: the same on every rank, never summed

Worked example, tensor degree 2 x sharding degree 2: rank (t, s) holds split sums S(t, s) and replicated sums
R(t, s) = R(s) of the parameters sharding rank s owns. Summing S over t, adding R, then summing over s gives
sum over s of (sum over t of S(t, s) + R(s)): every slice once, every replicated tensor once.

Sharding stage 3 reduces the gradients of its unsliced parameters (those of at most `segment_size` elements) only
inside the optimizer step; `step_gradients` reduces copies of them so the norm sees what the optimizer will.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import paddle

from paddlemix.distributed.memory import optimizer_chain


@dataclass
class Gradient:
    """One gradient this rank counts: the tensor, whether it is a tensor-parallel slice of its parameter, and the
    factor the optimizer step will still multiply it by before it applies it (sharding stage 2)."""

    value: Any
    split: bool = False
    scale: float = 1.0


@dataclass(frozen=True)
class NormGroups:
    """The communication groups the squared sums go over (None: degree 1, nothing to sum)."""

    tensor: Any = None
    sharding: Any = None
    pipeline: Any = None


def owner_check(optimizer: Any) -> Any:
    """A predicate `owned(param) -> bool`: does this rank count `param`'s gradient? Under sharding stage 1
    (fleet's DygraphShardingOptimizer) and stage 2 (group_sharded's optimizer) a parameter's reduced gradient
    lives on the rank that updates it; elsewhere every rank counts everything it holds.

    Raises:
        NotImplementedError: stage 1 with `split_param` (gradients live in fused communication buffers).
    """
    for opt in optimizer_chain(optimizer):
        if hasattr(opt, "_param2rank") and hasattr(opt, "_sharding_rank"):  # stage 1
            param2rank, rank = opt._param2rank, opt._sharding_rank
            return lambda p: param2rank.get(p.name, rank) == rank
        if hasattr(opt, "param2rank") and hasattr(opt, "_rank"):  # stage 2
            param2rank, rank = opt.param2rank, opt._rank
            return lambda p: param2rank.get(p.name, rank) == rank
        if hasattr(opt, "_comm_buffer_list"):
            raise NotImplementedError("sharding stage 1 with split_param keeps gradients in fused buffers")
    return lambda p: True


def held_gradient(param: Any) -> Any:
    """The step's gradient of `param` on this rank: its stage-3 slice (`bw_storage`), else `main_grad` under
    master-grad AMP, else `grad`; None when it has none."""
    for attr in ("bw_storage", "main_grad", "grad"):
        value = getattr(param, attr, None)
        if value is not None:
            return value
    return None


def stage3_unsliced(model: Any) -> list[Gradient]:
    """Sharding stage 3: the unsliced parameters' gradients summed over the sharding (and data) ranks, as the
    optimizer step will sum them, counted on sharding rank 0 only (every rank then holds the same values)."""
    out = []
    for storage in model._grad_storages.values():
        buffer = storage.buffer.astype("float32") * model._world_size_scaling  # [padded numel], a copy
        paddle.distributed.all_reduce(buffer, group=model._group)
        dp = getattr(model, "_dp_group", None)
        if dp is not None and dp.nranks > 1:
            buffer = buffer / dp.nranks
            paddle.distributed.all_reduce(buffer, group=dp)
        if model._group.rank == 0:
            out.append(Gradient(buffer))
    return out


def pending_scale(model: Any) -> float:
    """The factor sharding stage 2 still applies to the gradients inside the optimizer step: they are reduced as sums
    onto their owner in the backward pass and divided by the sharding degree only then (except fp16 ones).

    Raises:
        NotImplementedError: stage 2 with a data-parallel group (that reduction, too, happens in the step).
    """
    if not (hasattr(model, "_grad_scale") and hasattr(model, "_world_size_scaling")):
        return 1.0
    dp = getattr(model, "_dp_group", None)
    if dp is not None and dp.nranks > 1:
        raise NotImplementedError("sharding stage 2 with data parallel reduces gradients inside the optimizer step")
    return float(model._world_size_scaling) if getattr(model, "scale_in_opt", True) else 1.0


def step_gradients(model: Any, optimizer: Any) -> list[Gradient]:
    """The gradients this rank counts toward the step's norm (see the module docstring); a collective under
    sharding stage 3 (every rank must call it).

    Raises:
        NotImplementedError: see `owner_check` and `pending_scale`.
    """
    owned, scale = owner_check(optimizer), pending_scale(model)
    unsliced = set(map(id, getattr(model, "_unslice_params", ())))
    grads = []
    for p in model.parameters():
        if not getattr(p, "is_firstly_shared", True) or id(p) in unsliced or not owned(p):
            continue  # a tied pipeline weight past its first stage, a stage-3 unsliced one, another rank's
        value = held_gradient(p)
        if value is not None:
            grads.append(Gradient(value, bool(getattr(p, "is_distributed", False)), scale))
    if hasattr(model, "_grad_storages") and hasattr(model, "_unslice_params"):
        grads += stage3_unsliced(model)
    return grads


def squared_sums(grads: list[Gradient]) -> tuple[Any, Any]:
    """(sum of squares of the split gradients, of the others), each gradient times its `scale`: float32 scalars."""
    split = [(g.value.astype("float32") ** 2).sum() * g.scale**2 for g in grads if g.split]
    whole = [(g.value.astype("float32") ** 2).sum() * g.scale**2 for g in grads if not g.split]
    zero = paddle.zeros([], dtype="float32")
    return (paddle.add_n(split) if split else zero), (paddle.add_n(whole) if whole else zero.clone())


def global_norm(grads: list[Gradient], groups: NormGroups) -> float:
    """The L2 norm over all ranks' `grads`: split sums over the tensor group, then everything over the sharding and
    pipeline groups (a collective on every rank of those groups)."""
    split, whole = squared_sums(grads)
    if groups.tensor is not None:
        paddle.distributed.all_reduce(split, group=groups.tensor)
    total = split + whole
    for group in (groups.sharding, groups.pipeline):
        if group is not None:
            paddle.distributed.all_reduce(total, group=group)
    return math.sqrt(max(float(total), 0.0))


def hybrid_groups(tensor: int, sharding: int, pipeline: int) -> NormGroups:
    """The groups of fleet's hybrid communicate group whose degree is above 1."""
    if max(tensor, sharding, pipeline) <= 1:
        return NormGroups()
    from paddle.distributed import fleet

    hcg = fleet.get_hybrid_communicate_group()
    return NormGroups(
        tensor=hcg.get_model_parallel_group() if tensor > 1 else None,
        sharding=hcg.get_sharding_parallel_group() if sharding > 1 else None,
        pipeline=hcg.get_pipe_parallel_group() if pipeline > 1 else None,
    )
