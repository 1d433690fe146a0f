"""A LoRA Linear layer whose low-rank updates can cover named slices of a fused output.

Why our own layer instead of paddleformers' LoRAModel: paddleformers fuses q/k/v into `qkv_proj` and gate/up into
`up_gate_proj`, and its LoRA adapts a whole layer, so "LoRA on q_proj and v_proj" (the field's most common choice)
cannot be expressed there and its adapters cannot be split into Hugging Face PEFT's per-layer matrices. Here each
adapted slice ("part") has its own A/B pair, exactly as PEFT would attach to the separate Hugging Face layer:

    y = x @ W + b + scatter_p( dropout(x) @ A_p @ B_p ) * scaling

with W [in, out] (Paddle's Linear layout), A_p [in, r], B_p [r, len(part p)] and the scatter putting each part's
columns where the fused layer keeps them. The forward computes it as one product per side, concat_p(x @ A_p) @ B
with B the parts' B matrices scattered into one [parts * r, out] block matrix (`LoRALinear.fused_b`) (paddleformers interleaves q/k/v per KV group; see
`paddlemix.models.hf_layout.fused_columns`). Columns of parts without an adapter (k when only q and v are targeted)
get exactly nothing added.

Under tensor parallelism the adapter is split the way its layer is (Megatron's rule, as PEFT's TP LoRA does):

    column-parallel layer (q/k/v, gate/up; output columns split): A [in, r] whole on every rank, B [r, cols of this
        rank]; h = x @ A is summed over ranks in backward (c_identity), so A gets the full gradient on every rank.
    row-parallel layer (o, down; input rows split, output summed over ranks): A [rows of this rank, r], B [r, out]
        whole; h = x_r @ A_r is summed over ranks in forward (allreduce), so B sees the whole h.

The split matrices carry `is_distributed` and `split_axis` like the layer's own weight, so gradient clipping counts
them once and saving gathers them into the one-process PEFT layout.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import numpy as np
import paddle
import paddle.nn.functional as F


class LoRALinear(paddle.nn.Layer):
    """Stands in for a `paddle.nn.Linear`, sharing its `weight` and `bias` (same parameter names, so checkpoints and
    exports see the base tensors unchanged) and adding `lora_A.<part>` / `lora_B.<part>` per adapted part.

    Args:
        base: the Linear layer to adapt (weight [in, out]).
        parts: part name (the Hugging Face layer name, e.g. "q_proj") -> int64 output columns it owns in `base`;
            one part covering every column for an unfused layer.
        rank, alpha: LoRA rank r and alpha; scaling = alpha / r, or alpha / sqrt(r) with `use_rslora` (PEFT's rule).
        dropout: dropout probability on the adapter input (one independent mask per part, as separate layers get).
        parallel: "column" or "row" when `base` is a tensor-parallel layer (then A or B is this rank's slice; the
            caller gives `in_features`/part columns of the local layer), None for a plain Linear.
    """

    def __init__(
        self,
        base: paddle.nn.Linear,
        parts: Mapping[str, np.ndarray],
        rank: int,
        alpha: float,
        dropout: float = 0.0,
        use_rslora: bool = False,
        parallel: str | None = None,
    ):
        super().__init__()
        self.parallel = parallel
        # The parallel base layer computes its own output (with its collectives); kept outside the sublayers so the
        # parameter names stay `<layer>.weight` / `<layer>.bias`.
        self.__dict__["base_layer"] = base if parallel else None
        self.group = getattr(base, "model_parallel_group", None) if parallel else None
        self.weight = base.weight
        self.bias = base.bias
        in_features, out_features = base.weight.shape
        self.rank, self.alpha, self.use_rslora = rank, alpha, use_rslora
        self.scaling = alpha / (math.sqrt(rank) if use_rslora else rank)
        self.parts = list(parts)
        self.part_columns = {name: np.asarray(cols, dtype="int64") for name, cols in parts.items()}
        self.dropout = paddle.nn.Dropout(dropout) if dropout > 0 else None
        self.disabled = False  # `adapters_off`: the base layer alone (preference training's reference)
        self.lora_A = paddle.nn.ParameterDict()
        self.lora_B = paddle.nn.ParameterDict()
        dtype = base.weight.dtype
        zeros = paddle.nn.initializer.Constant(0.0)
        for name in self.parts:
            width = len(self.part_columns[name])
            self.lora_A[name] = self.create_parameter([in_features, rank], dtype=dtype, default_initializer=zeros)
            self.lora_B[name] = self.create_parameter([rank, width], dtype=dtype, default_initializer=zeros)
            split = {"column": (self.lora_B[name], 1), "row": (self.lora_A[name], 0)}.get(parallel)
            if split is not None:
                split[0].is_distributed, split[0].split_axis = True, split[1]
        # Where each fused output column takes its update from: the concatenated part updates, or a zero column.
        concat = np.concatenate([self.part_columns[p] for p in self.parts])
        source = np.full(out_features, len(concat), dtype="int64")
        source[concat] = np.arange(len(concat))
        self.identity = bool(len(concat) == out_features and (concat == np.arange(out_features)).all())
        self.pad = bool((source == len(concat)).any())
        self.register_buffer("column_source", paddle.to_tensor(source), persistable=False)

    def delta_weight(self) -> paddle.Tensor:
        """The merged update scaling * scatter(A_p @ B_p) as an [in, out] tensor (Paddle Linear layout)."""
        blocks = [self.lora_A[p] @ self.lora_B[p] for p in self.parts]  # each [in, len(part)]
        return self._scatter(blocks) * self.scaling

    def _scatter(self, blocks: list[paddle.Tensor]) -> paddle.Tensor:
        delta = blocks[0] if len(blocks) == 1 else paddle.concat(blocks, axis=-1)
        if self.identity:
            return delta
        if self.pad:
            delta = paddle.concat([delta, paddle.zeros_like(delta[..., :1])], axis=-1)
        return paddle.index_select(delta, self.column_source, axis=delta.ndim - 1)

    def fused_b(self) -> paddle.Tensor:
        """scaling x the parts' B matrices as one block matrix [parts * r, out (local)]: the rows of part p hold
        B_p at p's output columns and zeros elsewhere, so `concat_p(x @ A_p) @ fused_b()` is the layer's whole
        update. Built on the small B side, it replaces a scatter of the [tokens, out] update (whose backward was
        the slowest op of a tiny model's step) by one matmul."""
        blocks = [self.lora_B[p] for p in self.parts]  # each [r, len(part)]
        if len(blocks) > 1:
            widths = [b.shape[1] for b in blocks]
            total, start, rows = sum(widths), 0, []
            for b, width in zip(blocks, widths):
                rows.append(F.pad(b, [0, 0, start, total - start - width]))  # [r, total]: zeros left and right
                start += width
            blocks = [paddle.concat(rows, axis=0)]  # [parts * r, total]
        return self._scatter(blocks) * self.scaling

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        """y = base(x) + concat_p(dropout_p(x) @ A_p) @ fused_b(): one [tokens, parts * r] product and one
        [tokens, out] product per layer whatever the number of parts (see `fused_b`)."""
        from paddle.distributed.fleet.layers.mpu import mp_ops

        base = self.__dict__["base_layer"]
        out = base(x) if base is not None else F.linear(x, self.weight, self.bias)  # [..., out (local)]
        if self.disabled:
            return out
        if self.dropout is not None:  # one independent mask per part, as separate layers get
            h = paddle.concat([self.dropout(x) @ self.lora_A[p] for p in self.parts], axis=-1)  # [..., parts * r]
        elif len(self.parts) == 1:
            h = x @ self.lora_A[self.parts[0]]  # [..., r]
        else:
            h = x @ paddle.concat([self.lora_A[p] for p in self.parts], axis=1)  # [..., parts * r]
        if self.parallel == "column":  # forward: as is; backward: dL/dh summed over the ranks' column slices
            h = mp_ops._c_identity(h, group=self.group)
        elif self.parallel == "row":  # forward: the ranks' partial x_r @ A_r summed; backward: as is
            h = mp_ops._mp_allreduce(h, group=self.group, use_calc_stream=True, use_model_parallel=True)
        return out + h @ self.fused_b()  # [..., out (local)]

    def sharded_state_dict(self, structured_name_prefix: str = "") -> dict[str, Any]:
        """What flex checkpoints save and load: each split tensor (the base weight, and A or B of a parallel layer)
        as this rank's slice along its `split_axis`, so a resumed run gives every rank its own slice back."""
        from paddle.distributed.flex_checkpoint.dcp.sharded_weight import build_sharded_state_dict

        rules = {name: int(p.split_axis) for name, p in self.named_parameters() if getattr(p, "is_distributed", False)}
        return build_sharded_state_dict(self.state_dict(structured_name_prefix=""), rules, structured_name_prefix)

    def extra_repr(self) -> str:
        return f"in={self.weight.shape[0]}, out={self.weight.shape[1]}, parts={self.parts}, r={self.rank}"


@contextmanager
def adapters_off(model: paddle.nn.Layer) -> Iterator[int]:
    """Within the block every `LoRALinear` of `model` computes its base layer only (`F.linear`, or the split base
    layer under tensor parallel, on the same tensors), so the model is its base bit for bit without a second copy;
    yields the number of layers switched."""
    layers = [layer for layer in model.sublayers() if isinstance(layer, LoRALinear)]
    for layer in layers:
        layer.disabled = True
    try:
        yield len(layers)
    finally:
        for layer in layers:
            layer.disabled = False
