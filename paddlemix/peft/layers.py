"""A LoRA Linear layer whose low-rank updates can cover named slices of a fused output.

Why our own layer instead of paddleformers' LoRAModel: paddleformers fuses q/k/v into `qkv_proj` and gate/up into
`up_gate_proj`, and its LoRA adapts a whole layer, so "LoRA on q_proj and v_proj" (the field's most common choice)
cannot be expressed there and its adapters cannot be split into Hugging Face PEFT's per-layer matrices. Here each
adapted slice ("part") has its own A/B pair, exactly as PEFT would attach to the separate Hugging Face layer:

    y = x @ W + b + scatter_p( dropout(x) @ A_p @ B_p ) * scaling

with W [in, out] (Paddle's Linear layout), A_p [in, r], B_p [r, len(part p)] and the scatter putting each part's
columns where the fused layer keeps them (paddleformers interleaves q/k/v per KV group; see
`paddlemix.models.hf_layout.fused_columns`). Columns of parts without an adapter (k when only q and v are targeted)
get exactly nothing added.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

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
    """

    def __init__(
        self,
        base: paddle.nn.Linear,
        parts: Mapping[str, np.ndarray],
        rank: int,
        alpha: float,
        dropout: float = 0.0,
        use_rslora: bool = False,
    ):
        super().__init__()
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

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        out = F.linear(x, self.weight, self.bias)  # [..., out]
        if self.disabled:
            return out
        updates = []
        for p in self.parts:
            h = self.dropout(x) if self.dropout is not None else x
            updates.append((h @ self.lora_A[p]) @ self.lora_B[p])  # [..., len(part)]
        return out + self._scatter(updates) * self.scaling

    def extra_repr(self) -> str:
        return f"in={self.weight.shape[0]}, out={self.weight.shape[1]}, parts={self.parts}, r={self.rank}"


@contextmanager
def adapters_off(model: paddle.nn.Layer) -> Iterator[int]:
    """Within the block every `LoRALinear` of `model` computes its base layer only, so the model is its base
    (bit for bit: the same `F.linear` on the same tensors) without a second copy; yields the layers switched."""
    layers = [layer for layer in model.sublayers() if isinstance(layer, LoRALinear)]
    for layer in layers:
        layer.disabled = True
    try:
        yield len(layers)
    finally:
        for layer in layers:
            layer.disabled = False
