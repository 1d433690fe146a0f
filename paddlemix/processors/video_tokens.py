"""Videos as model inputs for the Qwen-VL families: patches (`pixel_values_videos`), grids, and the text each video
becomes (its tokens, and Qwen3-VL's timestamps).

Conventions are transformers 4.57.1's (Qwen2-VL/Qwen2.5-VL/Qwen3-VL video processors and processors, fed frames that
qwen-vl-utils already sampled and resized, so no further resize):

- pixels: uint8 frames / 255, normalised per channel by the image processor's mean and std; the frame count padded
  to a multiple of `temporal_patch_size` by repeating the last frame; patches flattened as the image processor
  flattens an image (merge x merge blocks in raster order), each row holding C x temporal x patch x patch values;
- grid (t, h, w) = (frames / temporal_patch_size, height / patch, width / patch); tokens = t h w / merge^2;
- Qwen2/2.5-VL text: `<|vision_start|>` + `<|video_pad|>` x tokens + `<|vision_end|>`; Qwen2.5-VL's time axis
  advances `second_per_grid_ts` = temporal_patch_size / sample fps per temporal patch;
- Qwen3-VL text, per temporal patch: `<{t:.1f} seconds>` + `<|vision_start|>` + `<|video_pad|>` x (h w / merge^2)
  + `<|vision_end|>`, t the mean time of the patch's first and last frame (`group_timestamps`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from paddlemix.processors.video import VideoPlan
from paddlemix.processors.video_sampling import group_timestamps

VIDEO_PLACEHOLDER_TEXT = "<|vision_start|><|video_pad|><|vision_end|>"
VIDEO_TOKEN = "<|video_pad|>"


@dataclass(frozen=True)
class PatchLayout:
    """How frames become patches: pixel sizes, temporal grouping and normalisation of one image processor."""

    patch_size: int
    merge_size: int
    temporal_patch_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    rescale: float = 1 / 255

    @classmethod
    def of(cls, image_processor: Any) -> PatchLayout:
        return cls(int(image_processor.patch_size), int(image_processor.merge_size),
                   int(image_processor.temporal_patch_size), tuple(image_processor.image_mean),
                   tuple(image_processor.image_std), float(getattr(image_processor, "rescale_factor", 1 / 255)))  # fmt: skip

    @property
    def factor(self) -> int:
        """Pixels per merged token side (28 for Qwen2/2.5-VL, 32 for Qwen3-VL)."""
        return self.patch_size * self.merge_size

    def grid(self, plan: VideoPlan) -> tuple[int, int, int]:
        frames = -(-len(plan.indices) // self.temporal_patch_size)
        return frames, plan.height // self.patch_size, plan.width // self.patch_size

    def patches(self, frames: np.ndarray) -> tuple[np.ndarray, tuple[int, int, int]]:
        """float32 [t*h*w, C*temporal*patch*patch] and the grid (t, h, w) of uint8 frames [T, H, W, C]."""
        tp, p, m = self.temporal_patch_size, self.patch_size, self.merge_size
        if len(frames) % tp:
            frames = np.concatenate([frames, np.repeat(frames[-1:], tp - len(frames) % tp, axis=0)])
        x = frames.astype(np.float32) * np.float32(self.rescale)
        x = (x - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        x = x.transpose(0, 3, 1, 2)  # [T, C, H, W]
        T, C, H, W = x.shape
        t, h, w = T // tp, H // p, W // p
        x = x.reshape(t, tp, C, h // m, m, p, w // m, m, p)
        x = x.transpose(0, 3, 6, 4, 7, 2, 1, 5, 8)  # t, h-block, w-block, h-in, w-in, C, tp, p, p
        return np.ascontiguousarray(x.reshape(t * h * w, C * tp * p * p)), (t, h, w)


def merged_video_text(grid: tuple[int, int, int], plan: VideoPlan, layout: PatchLayout) -> str:
    """Qwen2-VL / Qwen2.5-VL: one block of video tokens."""
    t, h, w = grid
    return "<|vision_start|>" + VIDEO_TOKEN * (t * h * w // layout.merge_size**2) + "<|vision_end|>"


def timestamped_video_text(grid: tuple[int, int, int], plan: VideoPlan, layout: PatchLayout) -> str:
    """Qwen3-VL: each temporal patch as `<t seconds>` and its own block of video tokens."""
    t, h, w = grid
    per_frame = "<|vision_start|>" + VIDEO_TOKEN * (h * w // layout.merge_size**2) + "<|vision_end|>"
    # transformers 4.57.1 groups timestamps by merge_size (2, equal to temporal_patch_size in every release)
    seconds = group_timestamps(list(plan.indices), plan.fps, layout.merge_size)
    return "".join(f"<{seconds[k]:.1f} seconds>" + per_frame for k in range(t))


@dataclass(frozen=True)
class VideoTokens:
    """How a family writes a video into text and which per-video inputs its model takes."""

    text: Callable[[tuple[int, int, int], VideoPlan, PatchLayout], str]
    seconds_per_grid: bool  # Qwen2.5-VL: `second_per_grid_ts` input
    placeholder: str = VIDEO_PLACEHOLDER_TEXT
    token: str = VIDEO_TOKEN


QWEN2_VIDEO = VideoTokens(merged_video_text, seconds_per_grid=False)
QWEN2_5_VIDEO = VideoTokens(merged_video_text, seconds_per_grid=True)
QWEN3_VIDEO = VideoTokens(timestamped_video_text, seconds_per_grid=False)
