"""Attention of a vision tower over a batch of images (and video frames): each image attends only to itself, so
attention runs per image, never over the whole batch with a dense mask.

Why: paddleformers' Qwen3-VL and PaddleOCR-VL vision towers pass the whole batch of patches as one sequence of
N rows, with FlashMask row indices saying which image each patch belongs to; without the FlashMask kernel (every
run here: their configs default to the eager function) that becomes a dense [N, N] mask and [heads, N, N] scores
in every layer, so memory and time grew with the square of the batch's patches. A video of 40 frames of 16x16
patches took a 100M-element mask, 4.8 GB and 2 minutes for one forward + backward of a tiny Qwen3-VL tower; per
frame it is 0.23 GB and 6 s (tests/models/test_vision_attention.py keeps the growth linear). Hugging Face
transformers computes softmax(q k^T * scale) v per image (its non-flash path splits at `cu_seqlens`); so does
this, and it runs consecutive images of one size (the frames of a video) as one batched matmul.

Row-index forms read (the 4th axis of [1, 1, N, c], int32; FlashMask's bidirectional forms):
  c == 4: [end, N, 0, start] per key: key j is seen by query rows start <= i < end (Qwen3-VL);
  c == 2, not causal: [end, start] per key, the same meaning (PaddleOCR-VL).
Any other mask (a dense `attention_mask`, causal indices, indices that are not whole blocks on the diagonal) goes
to paddleformers' eager function unchanged; no mask at all is one image.
Registered in paddleformers' `AttentionInterface` as "paddlemix_vision"; the families that need it select it in
their `prepare_config`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import paddle
from paddleformers.nn.attention.eager_attention import eager_attention_forward

NAME = "paddlemix_vision"
_cache: dict[str, Any] = {"source": None, "is_causal": None, "runs": None}  # the last row indices and their runs


def image_runs(startend: np.ndarray, is_causal: bool | None = None) -> list[tuple[int, int, int]] | None:
    """Runs (first row, images, rows per image) of consecutive equal-sized images, from row indices [N, c].

    Returns None when the indices do not say "each row attends exactly to its own block of rows" (see the module
    docstring for the forms read), so the caller falls back to a dense mask.
    """
    n, columns = startend.shape
    if n == 0:
        return None
    if columns == 4 and (startend[:, 1] == n).all() and (startend[:, 2] == 0).all():
        ends, starts = startend[:, 0], startend[:, 3]
    elif columns == 2 and is_causal is False:
        ends, starts = startend[:, 0], startend[:, 1]
    else:
        return None
    bounds = np.unique(ends)  # the end of every block, ascending
    if bounds[-1] != n or bounds[0] <= 0:
        return None
    block_of = np.searchsorted(bounds, np.arange(n), side="right")  # [N] block of each row
    block_starts = np.concatenate([[0], bounds[:-1]])
    if not ((ends == bounds[block_of]).all() and (starts == block_starts[block_of]).all()):
        return None
    runs: list[tuple[int, int, int]] = []
    for first, last in zip(block_starts.tolist(), bounds.tolist()):
        size = last - first
        if runs and runs[-1][2] == size:
            runs[-1] = (runs[-1][0], runs[-1][1] + 1, size)
        else:
            runs.append((first, 1, size))
    return runs


def _runs_of(startend: paddle.Tensor | None, rows: int, is_causal: bool | None) -> list[tuple[int, int, int]] | None:
    """`image_runs` of a batch's row-index tensor [1, 1, N, c] (or [1, 1, N]), computed once for all layers: the
    tower passes every layer the same tensor. No indices: one image of all rows."""
    if startend is None:
        return [(0, 1, rows)]
    if _cache["source"] is not startend or _cache["is_causal"] != is_causal:
        host = startend.numpy()
        if host.ndim == 3:
            host = host[..., None]
        one = host.shape[:3] == (1, 1, rows)  # one sequence, one mask for all heads
        _cache.update(source=startend, is_causal=is_causal, runs=image_runs(host[0, 0], is_causal) if one else None)
    return _cache["runs"]


def vision_attention_forward(
    module: Any,
    query: paddle.Tensor,
    key: paddle.Tensor,
    value: paddle.Tensor,
    attention_mask: paddle.Tensor | None = None,
    attn_mask_startend_row_indices: paddle.Tensor | None = None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    **kwargs: Any,
) -> tuple[paddle.Tensor, None]:
    """paddleformers' attention-function contract: query/key/value [1, H, N, D] -> (output [1, N, H*D], None).

    Scores and softmax as paddleformers' eager function takes them (q k^T, times the scale, softmax in float32);
    the largest intermediate is [H, images, rows, rows] of one run instead of [H, N, N].
    """
    batch, heads, rows, dim = query.shape
    runs = None
    if attention_mask is None and batch == 1 and key.shape[1] == heads:
        runs = _runs_of(attn_mask_startend_row_indices, rows, is_causal)
    if runs is None:
        return eager_attention_forward(module, query, key, value, attention_mask=attention_mask, dropout=dropout,
                                       scaling=scaling, is_causal=is_causal,
                                       attn_mask_startend_row_indices=attn_mask_startend_row_indices, **kwargs)  # fmt: skip
    scale = scaling if scaling is not None else dim**-0.5
    outputs = []
    for first, images, size in runs:
        q, k, v = (
            t[:, :, first : first + images * size].reshape([heads, images, size, dim]) for t in (query, key, value)
        )
        scores = paddle.matmul(q, k, transpose_y=True) * scale  # [H, images, size, size]
        weights = paddle.nn.functional.softmax(scores, axis=-1, dtype="float32").astype(query.dtype)
        if dropout > 0.0 and module.training:
            weights = paddle.nn.functional.dropout(weights, p=dropout, training=True)
        outputs.append(paddle.matmul(weights, v).reshape([heads, images * size, dim]))  # [H, rows of the run, D]
    out = outputs[0] if len(outputs) == 1 else paddle.concat(outputs, axis=1)  # [H, N, D]
    return out.transpose([1, 0, 2]).reshape([1, rows, heads * dim]), None


def register() -> str:
    """Make the function available to paddleformers' models under `NAME` (idempotent); returns `NAME`."""
    from paddleformers.nn.attention.interface import AttentionInterface

    AttentionInterface.register(NAME, vision_attention_forward)
    return NAME


def select(vision_config: Any) -> None:
    """Give `vision_config` this attention where it would run paddleformers' eager function (its default, unset
    or "eager"); a fused kernel the config already names (e.g. FlashMask on a GPU) is kept, since it never builds
    the dense mask."""
    if getattr(vision_config, "_attn_implementation", None) in (None, "eager"):
        vision_config._attn_implementation = register()
