"""PaddleOCR-VL's 3-D rotary positions (Qwen2-VL's rule), computed per sample in numpy.

Text advances all three axes (t, h, w) by one. An image of t x h x w patches, merged 2 x 2 into t x h/2 x w/2
tokens, takes positions (start + t', start + h', start + w') over its token grid; the text after it continues at
start + max(t, h/2, w/2). Example, text `a b` + one 1 x 4 x 4 image (2 x 2 tokens) + text `c`:

    tokens:  a  b  I  I  I  I  c
    t:       0  1  2  2  2  2  4
    h:       0  1  2  2  3  3  4
    w:       0  1  2  3  2  3  4

paddleformers 1.2's `get_rope_index` implements this for one image per row only; this rule covers any number of
images per sample (transformers 5.x's model computes the same).
"""

from __future__ import annotations

from typing import Any

import numpy as np


def image_positions(input_ids: np.ndarray, image_token_id: int, grid_thw: np.ndarray | None, merge: int) -> np.ndarray:
    """Position ids [3, L] (int64) of one sample's tokens `input_ids` [L] with images of patch grids `grid_thw`
    [n, 3] (in order of appearance; each image's tokens are contiguous).

    Raises:
        ValueError: the image tokens do not add up to the grids.
    """
    ids = np.asarray(input_ids)
    out = np.zeros((3, len(ids)), dtype="int64")
    grids = iter(np.asarray(grid_thw).reshape(-1, 3) if grid_thw is not None else ())
    start, i = 0, 0
    while i < len(ids):
        if ids[i] != image_token_id:
            out[:, i] = start
            start, i = start + 1, i + 1
            continue
        grid = next(grids, None)
        if grid is None:
            raise ValueError(f"image tokens at {i} have no image grid")
        t, h, w = int(grid[0]), int(grid[1]) // merge, int(grid[2]) // merge
        n = t * h * w
        if not np.all(ids[i : i + n] == image_token_id):
            raise ValueError(f"image at token {i} has fewer than its {n} tokens")
        tt, hh, ww = np.meshgrid(np.arange(t), np.arange(h), np.arange(w), indexing="ij")
        out[:, i : i + n] = np.stack([tt.ravel(), hh.ravel(), ww.ravel()]) + start
        start, i = start + max(t, h, w), i + n
    return out


def positions(config: Any, input_ids: np.ndarray, grid_thw: np.ndarray | None) -> np.ndarray:
    """Position ids [3, L] of one sample, for packing and batched generation (the family adapter's rule)."""
    merge = int(config.vision_config.spatial_merge_size)
    return image_positions(input_ids, int(config.image_token_id), grid_thw, merge)
