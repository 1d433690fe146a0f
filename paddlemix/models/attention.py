"""Language-model attention for devices without a fused attention kernel (CPU): softmax(q k^T * scale + mask) v in
the fewest Paddle ops, with the mask of a batch built once and shared by every layer.

Why not paddleformers' attention functions there: its eager function repeats the key/value heads for grouped-query
attention (copies plus their backward) and, for MIXToken packs, rebuilds the dense mask from FlashMask's row indices
in every layer; its "sdpa" function goes through `paddle.nn.functional.scaled_dot_product_attention`, whose CPU
backend is the same matmul-softmax-matmul composition with extra transposes, the repeated heads and the per-layer
mask. Here the query heads of one key/value head are stacked along the rows ([B, KV, G*L, D]), so one batched
matmul serves a whole group without copying keys or values, and the additive mask [B, 1, 1, L, S] broadcasts over
heads and groups. Values equal the eager function's to float rounding (tests/models/test_attention.py).

This function serves CPU runs only (`qwen_vl_common.prepare_config`); the mask is made on the host.

Masks, in the order they are looked at (paddleformers passes them per layer):
  attn_mask_startend_row_indices [B, 1, S] or [B, 1, S, 1] (int32, MIXToken packs): key j is hidden from query
      rows >= value[j], on top of causality;
  attention_mask [B, 1, L, S] (additive float, from the padding mask);
  neither: causal, aligned to the last key (a query block of L rows after S - L cached keys).
Registered in paddleformers' `AttentionInterface` as "paddlemix_sdpa"; `use_fast_attention` selects it in a config.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import paddle

NAME = "paddlemix_sdpa"
_cache: dict[str, Any] = {"key": None, "mask": None}  # the last batch's mask source and its additive mask


def additive_mask(startend: paddle.Tensor | None, length: int, keys: int, dtype: Any) -> paddle.Tensor:
    """Additive mask [B or 1, 1, 1, L, S]: 0 where query i may see key j, the dtype's lowest value elsewhere.

    startend: FlashMask row indices [B, 1, S(, 1)] or None (causal only); L query rows follow S - L earlier keys.
    """
    rows = np.arange(keys - length, keys)[:, None]  # [L, 1] query positions
    allowed = np.arange(keys)[None, :] <= rows  # [L, S] causal
    if startend is not None:  # built by numpy: Paddle's broadcast compare of [B, 1, 1, L, S] took ~40 ms on CPU
        ends = startend.numpy().reshape([startend.shape[0], 1, 1, 1, keys])  # [B, 1, 1, 1, S]
        allowed = allowed & (rows < ends)  # [B, 1, 1, L, S]
    else:
        allowed = allowed.reshape([1, 1, 1, length, keys])
    lowest = paddle.finfo(dtype).min
    return paddle.to_tensor(np.where(allowed, 0.0, lowest).astype("float32")).astype(dtype)


def _shared_mask(startend: paddle.Tensor | None, length: int, keys: int, dtype: Any) -> paddle.Tensor:
    """`additive_mask`, computed once for all layers of a forward: the layers get the same row-index tensor."""
    key = (id(startend), length, keys, str(dtype))
    if _cache["key"] != key or (startend is not None and _cache.get("source") is not startend):
        _cache.update(key=key, source=startend, mask=additive_mask(startend, length, keys, dtype))
    return _cache["mask"]


def sdpa_attention_forward(
    module: Any,
    query: paddle.Tensor,
    key: paddle.Tensor,
    value: paddle.Tensor,
    attention_mask: paddle.Tensor | None = None,
    attn_mask_startend_row_indices: paddle.Tensor | None = None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[paddle.Tensor, None]:
    """paddleformers' attention-function contract: query [B, H, L, D], key/value [B, KV, S, D] (H a multiple of
    KV) -> (output [B, L, H*D], None)."""
    batch, heads, length, dim = query.shape
    kv_heads, keys = key.shape[1], key.shape[2]
    groups = heads // kv_heads
    scale = scaling if scaling is not None else dim**-0.5
    q = (query * scale).reshape([batch, kv_heads, groups * length, dim])  # heads of one KV head stacked by rows
    scores = paddle.matmul(q, key, transpose_y=True)  # [B, KV, G*L, S]
    scores = scores.reshape([batch, kv_heads, groups, length, keys])
    if attn_mask_startend_row_indices is not None or attention_mask is None:
        scores = scores + _shared_mask(attn_mask_startend_row_indices, length, keys, scores.dtype)
    else:
        scores = scores + attention_mask[:, :, :, :keys].unsqueeze(2).astype(scores.dtype)  # [B, 1, 1, L, S]
    if scores.dtype != paddle.float32:  # softmax in float32, as the eager function takes it
        weights = paddle.nn.functional.softmax(scores.astype("float32"), axis=-1).astype(query.dtype)
    else:
        weights = paddle.nn.functional.softmax(scores, axis=-1)
    if dropout > 0.0 and module.training:
        weights = paddle.nn.functional.dropout(weights, p=dropout, training=True)
    out = paddle.matmul(weights.reshape([batch, kv_heads, groups * length, keys]), value)  # [B, KV, G*L, D]
    out = out.reshape([batch, heads, length, dim]).transpose([0, 2, 1, 3])  # [B, L, H, D]
    return out.reshape([batch, length, heads * dim]), None


def register() -> str:
    """Make the function available to paddleformers' models under `NAME` (idempotent); returns `NAME`."""
    from paddleformers.nn.attention.interface import AttentionInterface

    AttentionInterface.register(NAME, sdpa_attention_forward)
    return NAME
