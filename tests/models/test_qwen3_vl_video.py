"""Qwen3-VL batches with images and videos: videos passed on as one-temporal-patch images give the model's own
video outputs, and the blocks keep their order."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import paddle

from paddlemix.auto import AutoModelMIX, AutoProcessorMIX
from paddlemix.datasets.conversation import Message, Sample, VideoRef
from paddlemix.models import adapter_for
from paddlemix.models.qwen3_vl_model import videos_as_images
from paddlemix.processors.chat_template import template_for
from paddlemix.testing.synthetic_video import moving_square, write_clip

CONFIG = SimpleNamespace(vision_start_token_id=1, image_token_id=2, video_token_id=3)


def test_blocks_keep_their_order() -> None:
    # row 0: image A (1x2x2 = 4 rows), video V frame 0; row 1: video V frame 1, image B (1x2x4 = 8 rows)
    ids = np.asarray([[1, 2, 9, 1, 3, 9], [1, 3, 9, 1, 2, 9]])
    images = np.arange(12)[:, None] + 100.0  # A: 100..103, B: 104..111
    videos = np.arange(8)[:, None] + 200.0  # V: 2 temporal patches of 2x2: 200..203, 204..207
    new_ids, rows, grids = videos_as_images(ids, images, np.asarray([[1, 2, 2], [1, 2, 4]]), videos,
                                            np.asarray([[2, 2, 2]]), CONFIG)  # fmt: skip
    assert (new_ids == 3).sum() == 0 and (new_ids == 2).sum() == 4
    assert rows[:, 0].tolist() == [100, 101, 102, 103, 200, 201, 202, 203, 204, 205, 206, 207, *range(104, 112)]
    assert grids.tolist() == [[1, 2, 2], [1, 2, 2], [1, 2, 2], [1, 2, 4]]


def test_video_as_images_equals_the_video_path(tiny_qwen3_vl_dir: Path, tmp_path: Path) -> None:
    processor = AutoProcessorMIX.from_pretrained(tiny_qwen3_vl_dir)
    encoder = adapter_for(tiny_qwen3_vl_dir).sample_processor(processor, 4096)
    clip = write_clip(tmp_path / "c.mp4", moving_square("left", 12, 56), fps=4)
    sample = Sample(
        (Message("user", "<video>Which way?"), Message("assistant", "left")), videos=(VideoRef(str(clip)),)
    )
    out = encoder(sample, template_for(processor))
    model = AutoModelMIX.from_pretrained(tiny_qwen3_vl_dir)
    ids = paddle.to_tensor(out["input_ids"][None])
    grid = paddle.to_tensor(out["video_grid_thw"])
    with paddle.no_grad():
        as_video = model(input_ids=ids, pixel_values_videos=paddle.to_tensor(out["pixel_values_videos"]),
                         video_grid_thw=grid).logits.numpy()  # fmt: skip
        positions, _ = model.model.get_rope_index(ids, None, grid)
        no_images = np.zeros((0, out["pixel_values_videos"].shape[1]), dtype="float32")
        new_ids, rows, grids = videos_as_images(out["input_ids"][None], no_images, np.zeros((0, 3), dtype="int64"),
                                                out["pixel_values_videos"], out["video_grid_thw"], model.config)  # fmt: skip
        as_images = model(input_ids=paddle.to_tensor(new_ids), pixel_values=paddle.to_tensor(rows, dtype="float32"),
                          image_grid_thw=paddle.to_tensor(grids), position_ids=positions).logits.numpy()  # fmt: skip
    assert len(grids) == int(out["video_grid_thw"][0][0]) > 1
    np.testing.assert_allclose(as_images, as_video, atol=1e-5)
