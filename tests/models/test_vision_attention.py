"""The per-image vision attention equals paddleformers' eager attention with the dense mask (values and gradients),
reads the row-index forms of Qwen3-VL and PaddleOCR-VL, and keeps a vision tower's memory linear in the frames."""

from __future__ import annotations

from pathlib import Path

import attention_checks
import numpy as np
import paddle
import pytest
from attention_checks import run
from paddle.base import core
from paddleformers.nn.attention.eager_attention import eager_attention_forward

from paddlemix.auto import AutoConfigMIX, AutoModelMIX
from paddlemix.models import vision_attention
from paddlemix.models.vision_attention import image_runs, vision_attention_forward

SIZES = [4, 4, 4, 4, 8, 4, 2, 2]  # an image, a 3-frame video, a larger image, an image, a 2-frame video


def qwen3_rows(sizes: list[int]) -> np.ndarray:
    """Row indices [N, 4] as paddleformers' Qwen3-VL vision tower builds them: [end, N, 0, start] per row."""
    ends = np.cumsum(sizes)
    starts, n = ends - sizes, int(ends[-1])
    return np.concatenate([np.tile([[e, n, 0, s]], (size, 1)) for s, e, size in zip(starts, ends, sizes)])


def paddleocr_rows(sizes: list[int]) -> np.ndarray:
    """Row indices [N, 2] as paddleformers' PaddleOCR-VL vision encoder builds them: [end, start] per row."""
    return qwen3_rows(sizes)[:, [0, 3]]


def indices(rows: np.ndarray) -> paddle.Tensor:
    return paddle.to_tensor(rows[None, None].astype("int32"))  # [1, 1, N, c]


def qkv(rows: int, heads: int = 2, dim: int = 8) -> list[paddle.Tensor]:
    rng = np.random.default_rng(0)
    out = []
    for _ in range(3):
        t = paddle.to_tensor(rng.normal(size=(1, heads, rows, dim)).astype("float32"))
        t.stop_gradient = False
        out.append(t)
    return out


def assert_same(ours: tuple, eager: tuple) -> None:
    attention_checks.assert_same(ours, eager, atol=1e-6)


def test_runs_group_consecutive_images_of_one_size() -> None:
    assert image_runs(qwen3_rows(SIZES)) == [(0, 4, 4), (16, 1, 8), (24, 1, 4), (28, 2, 2)]
    assert image_runs(paddleocr_rows(SIZES), is_causal=False) == image_runs(qwen3_rows(SIZES))
    assert image_runs(qwen3_rows([6])) == [(0, 1, 6)]


def test_forms_that_are_not_whole_blocks_are_not_read() -> None:
    rows = qwen3_rows(SIZES)
    assert image_runs(paddleocr_rows(SIZES), is_causal=True) is None  # causal: another meaning of 2 columns
    assert image_runs(paddleocr_rows(SIZES)) is None  # unknown causality
    assert image_runs(rows[:, :1]) is None  # 1 column: causal
    shifted = rows.copy()
    shifted[5, 3] = 5  # row 5 would see a block starting at itself: not a block on the diagonal
    assert image_runs(shifted) is None
    sliding = rows.copy()
    sliding[:, 1] = rows[:, 0] + 1  # a second masked band: not block-diagonal
    assert image_runs(sliding) is None


@pytest.mark.parametrize("form", ["qwen3_vl", "paddleocr_vl"])
def test_values_and_gradients_equal_the_dense_mask(form: str) -> None:
    tensors = qkv(sum(SIZES))
    if form == "qwen3_vl":
        kwargs = {"attn_mask_startend_row_indices": indices(qwen3_rows(SIZES))}
    else:
        kwargs = {"attn_mask_startend_row_indices": indices(paddleocr_rows(SIZES)), "is_causal": False}
    assert_same(run(vision_attention_forward, tensors, **kwargs), run(eager_attention_forward, tensors, **kwargs))


def test_no_mask_is_one_image_and_other_masks_go_to_eager() -> None:
    tensors = qkv(12)
    assert_same(run(vision_attention_forward, tensors), run(eager_attention_forward, tensors))
    causal = {"attn_mask_startend_row_indices": indices(paddleocr_rows([5, 7])), "is_causal": True}
    assert_same(run(vision_attention_forward, tensors, **causal), run(eager_attention_forward, tensors, **causal))


@pytest.mark.parametrize("family", ["qwen3_vl", "paddleocr_vl"])
def test_families_with_packed_vision_towers_select_it(family: str, request: pytest.FixtureRequest) -> None:
    config = AutoConfigMIX.from_pretrained(request.getfixturevalue(f"tiny_{family}_dir"))
    assert config.vision_config._attn_implementation == vision_attention.NAME


def tower_outputs(model, family: str, attention: str) -> list[np.ndarray]:
    """The vision outputs of an image, a 3-frame video and a smaller image in one batch, with `attention`."""
    model.config.vision_config._attn_implementation = attention
    rng = np.random.default_rng(0)
    with paddle.no_grad():
        if family == "qwen3_vl":
            grid = np.asarray([[1, 4, 4], [3, 4, 4], [1, 2, 4]], dtype="int64")
            width = 3 * model.config.vision_config.temporal_patch_size * model.config.vision_config.patch_size**2
            pixels = rng.normal(size=(int(grid.prod(-1).sum()), width)).astype("float32")
            merged, deepstack = model.model.visual(paddle.to_tensor(pixels), grid_thw=paddle.to_tensor(grid))
            return [t.numpy() for t in (merged, *deepstack)]
        grid = np.asarray([[1, 4, 6], [1, 2, 4], [1, 4, 4]], dtype="int64")  # PaddleOCR-VL: three images
        ids = [[5, 6, *[model.config.image_token_id] * int(grid.prod(-1).sum() // 4), 7]]
        pixels = rng.normal(size=(int(grid.prod(-1).sum()), 3, 14, 14)).astype("float32")
        return [model(input_ids=paddle.to_tensor(ids), image_grid_thw=paddle.to_tensor(grid),
                      pixel_values=paddle.to_tensor(pixels)).logits.numpy()]  # fmt: skip


@pytest.mark.parametrize("family", ["qwen3_vl", "paddleocr_vl"])
def test_towers_give_the_dense_mask_outputs(family: str, request: pytest.FixtureRequest) -> None:
    model = AutoModelMIX.from_pretrained(request.getfixturevalue(f"tiny_{family}_dir"))
    ours, eager = tower_outputs(model, family, vision_attention.NAME), tower_outputs(model, family, "eager")
    for a, b in zip(ours, eager, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def vision_step_bytes(model, frames: int, side: int) -> int:
    """Peak host bytes Paddle allocates for one forward + backward of the vision tower on one video."""
    vision = model.config.vision_config
    width = vision.in_channels * vision.temporal_patch_size * vision.patch_size**2
    pixels = paddle.to_tensor(np.random.default_rng(0).normal(size=(frames * side * side, width)).astype("float32"))
    grid = paddle.to_tensor(np.asarray([[frames, side, side]], dtype="int64"))
    base = core.host_memory_stat_current_value("Allocated", 0)
    core.host_memory_stat_reset_peak_value("Allocated", 0)
    merged, deepstack = model.model.visual(pixels, grid_thw=grid)
    (merged.sum() + sum(d.sum() for d in deepstack)).backward()
    peak = core.host_memory_stat_peak_value("Allocated", 0) - base
    model.clear_gradients()
    return peak


def test_vision_memory_grows_linearly_with_the_frames(tiny_qwen3_vl_dir: Path) -> None:
    # Before: a dense [N, N] mask and [heads, N, N] scores over all N = frames * 256 patches in every layer, so
    # twice the frames took 3.9x the bytes (16 frames: 778 MiB); per frame it is 2.0x (16 frames: 66 MiB).
    model = AutoModelMIX.from_pretrained(tiny_qwen3_vl_dir)
    model.train()
    eight, sixteen = vision_step_bytes(model, 8, 16), vision_step_bytes(model, 16, 16)
    assert sixteen < 2.3 * eight, (eight, sixteen)


def test_a_fused_kernel_named_in_the_config_is_kept() -> None:
    """Only paddleformers' eager default is replaced; a kernel the config names (FlashMask on a GPU) stays."""
    from types import SimpleNamespace

    for before, after in ((None, vision_attention.NAME), ("eager", vision_attention.NAME), ("flashmask", "flashmask")):
        config = SimpleNamespace(_attn_implementation=before)
        vision_attention.select(config)
        assert config._attn_implementation == after
