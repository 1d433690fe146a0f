"""Tensor parallel: which slice of each full tensor a rank holds, and how the slices go back together.

paddleformers builds the parallel layers itself once the language model's config says so
(`tensor_model_parallel_size`, `tensor_parallel_rank`): ColumnParallelLinear (q/k/v, gate/up), RowParallelLinear
(o, down), VocabParallelEmbedding and a vocabulary-parallel LMHead. Each such parameter carries `is_distributed` and
`split_axis` (the axis of its Paddle layout that is cut), which is all the generic plan needs, except for fused
layers whose output holds several parts that are each cut on their own:

    up_gate_proj  [hidden, 2*I] = [gate | up]        rank r holds [gate_r | up_r]        (2 parts)
    qkv_proj      [hidden, (H + 2*KV) * d]           rank r holds KV groups r*KV/N ...   (1 part)

paddleformers keeps q/k/v interleaved per KV group ([q of the group's heads | k | v] per group; see
`paddlemix.models.hf_layout`), so one contiguous block per rank already holds whole groups; gate/up are stored one
after the other, so each half is cut. The number of parts of a fused layer is family data
(`ModelAdapter.tensor_parallel_parts`).

Worked example, degree 2, intermediate size I = 4, `up_gate_proj` columns 0..7 (gate 0..3, up 4..7):
rank 0 holds columns [0, 1, 4, 5], rank 1 holds [2, 3, 6, 7]; `gather` puts them back in 0..7 order.

Everything else (norms, a vision tower, a projector, our CLIP) is replicated: each rank holds the whole tensor.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TensorParallel:
    """This process's place in the tensor-parallel group: `degree` ranks, this one is `rank` (0-based)."""

    degree: int = 1
    rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.degree > 1


# One process, or a run without tensor parallelism.
SINGLE = TensorParallel()


@dataclass(frozen=True)
class Split:
    """How one parameter is cut: along `axis` of its Paddle layout, in `parts` equal parts each cut on its own."""

    axis: int
    parts: int = 1

    def indices(self, size: int, degree: int, rank: int) -> np.ndarray:
        """Positions (int64, along `axis` of the full tensor of length `size`) that `rank` holds, in its order.

        Raises:
            ValueError: `degree` does not divide a part's length.
        """
        part = size // self.parts
        if size % self.parts or part % degree:
            raise ValueError(f"{degree} ranks cannot split {self.parts} part(s) of a length-{size} axis evenly")
        block = part // degree
        return np.concatenate(
            [np.arange(p * part + rank * block, p * part + (rank + 1) * block) for p in range(self.parts)]
        )

    def take(self, full: np.ndarray, tp: TensorParallel) -> np.ndarray:
        """The slice of `full` that rank `tp.rank` holds (a new contiguous array)."""
        return np.ascontiguousarray(np.take(full, self.indices(full.shape[self.axis], tp.degree, tp.rank), self.axis))

    def join(self, pieces: Sequence[np.ndarray]) -> np.ndarray:
        """The full tensor from every rank's slice (rank order); inverse of `take`."""
        degree = len(pieces)
        size = pieces[0].shape[self.axis] * degree
        order = np.concatenate([self.indices(size, degree, r) for r in range(degree)])
        stacked = np.concatenate(pieces, axis=self.axis)
        return np.ascontiguousarray(np.take(stacked, np.argsort(order), self.axis))


def parts_of(name: str, parts: Mapping[str, int]) -> int:
    """How many separately cut parts the parameter `name` holds: `parts[layer]` for a fused layer, else 1."""
    layer = name.rsplit(".", 2)[-2] if name.count(".") >= 1 else name
    return parts.get(layer, 1)


def split_of(name: str, param: Any, parts: Mapping[str, int]) -> Split | None:
    """The Split of a built parameter, or None when every rank holds it whole."""
    if not getattr(param, "is_distributed", False):
        return None
    return Split(int(getattr(param, "split_axis", 0)), parts_of(name, parts))


def configure(config: Any, tp: TensorParallel) -> None:
    """Ask the family's language model for parallel layers: degree, rank, and full logits out of the head (the
    trainer's loss reads whole rows of logits). The vision tower and projector keep degree 1 (replicated)."""
    text = config.text_config
    text.tensor_model_parallel_size = tp.degree
    text.tensor_parallel_rank = tp.rank
    text.tensor_parallel_output = False


def current() -> TensorParallel:
    """The tensor-parallel degree and rank of this process from fleet's hybrid communicate group (degree 1 when
    fleet runs no model parallelism)."""
    from paddle.distributed import fleet

    try:
        hcg = fleet.get_hybrid_communicate_group()
    except (AttributeError, AssertionError):
        return TensorParallel()
    if hcg is None:
        return TensorParallel()
    return TensorParallel(hcg.get_model_parallel_world_size(), hcg.get_model_parallel_rank())


def gather_state(model: Any, parts: Mapping[str, int], tp: TensorParallel) -> dict[str, np.ndarray]:
    """Every parameter and buffer of `model` as a full numpy array (float32 for half types), the split ones
    gathered from all ranks of the tensor-parallel group. Every rank of the group must call it (collective)."""
    from paddlemix.utils.io import to_numpy

    params = dict(model.named_parameters())
    out: dict[str, np.ndarray] = {}
    for name, tensor in model.state_dict().items():
        split = split_of(name, params.get(name, tensor), parts) if tp.enabled else None
        out[name] = split.join(all_gather(to_numpy(tensor), tp)) if split else to_numpy(tensor)
    return out


def all_gather(value: np.ndarray, tp: TensorParallel) -> list[np.ndarray]:
    """This rank's array from every rank of the tensor-parallel group, in rank order (one all_gather)."""
    import paddle
    import paddle.distributed as dist
    from paddle.distributed import fleet

    group = fleet.get_hybrid_communicate_group().get_model_parallel_group()
    pieces: list[Any] = []
    dist.all_gather(pieces, paddle.to_tensor(value), group=group)
    return [p.numpy() for p in pieces]


def rank_summary(model: Any, parts: Mapping[str, int], groups: Mapping[str, Sequence[str]], tp: TensorParallel) -> str:
    """One log line: this rank's parameter counts (all, and in the split layers: their slices plus the LoRA
    matrices on them), and the module groups every rank keeps whole."""
    import fnmatch

    counts = {"all": [0, 0], "split": [0, 0]}
    whole: dict[str, int] = {}
    layers = {name.rsplit(".", 1)[0] for name, param in model.named_parameters() if split_of(name, param, parts)}
    for name, param in model.named_parameters():
        count = int(np.prod(param.shape))
        in_split = any(name.startswith(layer + ".") for layer in layers)
        for key in ("all", "split") if in_split else ("all",):
            counts[key][0] += count
            counts[key][1] += 0 if param.stop_gradient else count
        group = next((g for g, pats in groups.items() if any(fnmatch.fnmatch(name, p) for p in pats)), None)
        if not in_split and group not in (None, "llm"):
            whole[group] = whole.get(group, 0) + count
    kept = ", ".join(f"{g} ({n:,})" for g, n in sorted(whole.items())) or "none"
    (total, trainable), (split, split_trainable) = counts["all"], counts["split"]
    return (
        f"tensor parallel rank {tp.rank}/{tp.degree}: {total:,} parameters on this rank ({trainable:,} trainable), "
        f"split layers {split:,} ({split_trainable:,} trainable); replicated on every rank: {kept}, and the norms"
    )


def check_lora_targets(modules: Sequence[str], splittable: Sequence[str], degree: int) -> list[str]:
    """LoRA targets that a tensor-parallel run cannot adapt: any module of the language model that is not one of
    the Linear layers the family splits (names in `splittable`, e.g. q_proj ... down_proj)."""
    if degree <= 1:
        return []
    bad = sorted(m for m in modules if ".language_model." in m and m.rsplit(".", 1)[-1] not in splittable)
    if not bad:
        return []
    return [
        f'"lora_target_modules" selects {", ".join(bad[:3])}, which "tensor_parallel_degree" = {degree} cannot split '
        f"(split layers: {', '.join(splittable)}); drop them or use tensor_parallel_degree 1."
    ]
