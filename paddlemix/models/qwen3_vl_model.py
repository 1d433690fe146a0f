"""Qwen3-VL on paddleformers' `Qwen3VLForConditionalGenerationDeprecated`, taking images and videos in one batch.

paddleformers 1.2 fails on a batch holding both (its DeepStack merge calls `Tensor.new_zeros` with a tensor count,
a TypeError in Paddle). Its vision tower treats a video of grid (t, h, w) exactly as t images of grid (1, h, w)
(attention per frame, position tables per frame), and Qwen3-VL writes each temporal patch of a video as its own
`<|vision_start|>...<|vision_end|>` block; so such a batch is passed on as images only: each video block becomes an
image block of one temporal patch, its patches in the order of the blocks, with the 3-D positions computed first by
the model's own rule on the original inputs. Batches with one kind of input go through unchanged.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import paddle
from paddleformers.transformers.qwen3_vl.modeling import Qwen3VLForConditionalGenerationDeprecated


def videos_as_images(
    input_ids: np.ndarray, pixel_values: np.ndarray, image_grid_thw: np.ndarray, pixel_values_videos: np.ndarray,
    video_grid_thw: np.ndarray, config: Any,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
    """(input ids [B, L], pixel rows [N, D], image grids [K, 3]) with every video block turned into an image block.

    Blocks are visited in row-major token order, which is the order of the patches of each kind; an image block
    takes the next image (t*h*w rows), a video block the next temporal patch of the current video (h*w rows)."""
    start, image, video = config.vision_start_token_id, config.image_token_id, config.video_token_id
    image_rows = np.cumsum([0, *(int(np.prod(g)) for g in image_grid_thw)])
    frames = [(k, f) for k, (t, _, _) in enumerate(video_grid_thw) for f in range(int(t))]
    video_starts = np.cumsum([0, *(int(np.prod(g)) for g in video_grid_thw)])
    rows, grids, next_image, next_frame = [], [], 0, 0
    flat = input_ids.reshape(-1)
    for pos in np.flatnonzero(flat[:-1] == start):
        kind = flat[pos + 1]
        if kind == image:
            rows.append(pixel_values[image_rows[next_image] : image_rows[next_image + 1]])
            grids.append(image_grid_thw[next_image])
            next_image += 1
        elif kind == video:
            k, f = frames[next_frame]
            _, h, w = (int(x) for x in video_grid_thw[k])
            first = video_starts[k] + f * h * w
            rows.append(pixel_values_videos[first : first + h * w])
            grids.append(np.asarray([1, h, w], dtype=image_grid_thw.dtype))
            next_frame += 1
    ids = np.where(input_ids == video, image, input_ids)
    return ids, np.concatenate(rows), np.stack(grids)


class Qwen3VLForConditionalGeneration(Qwen3VLForConditionalGenerationDeprecated):
    """paddleformers' Qwen3-VL with mixed image + video batches passed on as images (see the module docstring)."""

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if args or kwargs.get("pixel_values") is None or kwargs.get("pixel_values_videos") is None:
            return super().forward(*args, **kwargs)
        ids, pixels, grids = kwargs["input_ids"], kwargs["pixel_values"], kwargs["image_grid_thw"]
        videos, video_grids = kwargs.pop("pixel_values_videos"), kwargs.pop("video_grid_thw")
        if kwargs.get("position_ids") is None:  # positions of the original inputs (videos with their timestamps)
            kwargs["position_ids"], _ = self.model.get_rope_index(
                ids, grids, video_grids, kwargs.get("attention_mask")
            )
        new_ids, rows, new_grids = videos_as_images(ids.numpy(), pixels.numpy(), grids.numpy(), videos.numpy(),
                                                    video_grids.numpy(), self.config)  # fmt: skip
        kwargs["input_ids"] = paddle.to_tensor(new_ids)
        kwargs["pixel_values"] = paddle.to_tensor(rows, dtype=pixels.dtype)
        kwargs["image_grid_thw"] = paddle.to_tensor(new_grids)
        return super().forward(**kwargs)
