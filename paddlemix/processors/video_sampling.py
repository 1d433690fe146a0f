"""Which frames of a video a Qwen-VL model sees, and at what size: qwen-vl-utils 0.0.14's rules (`vision_process.py`).

Everything here is arithmetic on container metadata (frame count, frame rate, frame size), so a sample's token
count is known without decoding a frame:

- frame count: `nframes` (rounded to a multiple of 2) when given, else `total / video_fps * fps` clamped to
  [ceil_2(min_frames), floor_2(min(max_frames, total))] and floored to a multiple of 2 (`sample_count`);
- which frames: `linspace(first, last, nframes).round()` over the frame range `video_start`..`video_end` seconds
  (`frame_range`, `frame_indices`), computed in float32 as torch.linspace does, rounded half to even;
- frame size: `smart_resize` of the first frame with a per-frame budget
  `max(min(768 f^2, total_pixels / nframes * 2), int(1.05 min_pixels))` and `min_pixels` 128 f^2, where
  f = patch size x merge size (28 for Qwen2/2.5-VL, 32 for Qwen3-VL) and `total_pixels` 128000 f^2 0.9 (`frame_size`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from paddlemix.datasets.conversation import SampleError

FPS = 2.0
FRAME_FACTOR = 2
FPS_MIN_FRAMES = 4
FPS_MAX_FRAMES = 768
VIDEO_MIN_TOKENS = 128  # per frame, in merged tokens: min_pixels = 128 f^2
VIDEO_MAX_TOKENS = 768  # per frame: max_pixels at most 768 f^2
MODEL_SEQ_LEN = 128000  # qwen-vl-utils' total_pixels default: 128000 f^2 * 0.9
MAX_RATIO = 200


@dataclass(frozen=True)
class VideoOptions:
    """How to sample one video: the keys of a typed `{"type": "video", ...}` part (None = the default or the run's).

    Units: `fps` frames per second sampled; `video_start`/`video_end` seconds; pixel keys in pixels per frame
    (`total_pixels`: all sampled frames together).
    """

    fps: float | None = None
    nframes: int | None = None
    min_frames: int | None = None
    max_frames: int | None = None
    video_start: float | None = None
    video_end: float | None = None
    min_pixels: int | None = None
    max_pixels: int | None = None
    total_pixels: int | None = None

    @classmethod
    def from_record(cls, part: dict[str, Any]) -> VideoOptions:
        """The options a record part sets; a value that is not a number is a `SampleError`."""
        if part.get("fps") is not None and part.get("nframes") is not None:  # qwen-vl-utils asserts on both too
            raise SampleError('video part sets both "fps" and "nframes": give one (nframes fixes the count, fps '
                              "derives it from the clip's length)")  # fmt: skip
        values = {}
        for f in fields(cls):
            value = part.get(f.name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise SampleError(f'video "{f.name}" must be a non-negative number, got {value!r:.40}')
            values[f.name] = value
        return cls(**values)

    def over(self, defaults: VideoOptions) -> VideoOptions:
        """These options, with `defaults` where these are unset."""
        return VideoOptions(**{f.name: getattr(self, f.name) if getattr(self, f.name) is not None
                               else getattr(defaults, f.name) for f in fields(self)})  # fmt: skip


def round_by(x: float, factor: int) -> int:
    return round(x / factor) * factor


def ceil_by(x: float, factor: int) -> int:
    return math.ceil(x / factor) * factor


def floor_by(x: float, factor: int) -> int:
    return math.floor(x / factor) * factor


def smart_resize(height: int, width: int, factor: int, min_pixels: float, max_pixels: float) -> tuple[int, int]:
    """(height, width) rounded to multiples of `factor` with the area brought into [min_pixels, max_pixels], as
    qwen-vl-utils and transformers' image processors resize (the image path uses the latter; same rule)."""
    if max(height, width) / min(height, width) > MAX_RATIO:
        raise SampleError(f"video frame aspect ratio over {MAX_RATIO}: {width}x{height}")
    h_bar, w_bar = max(factor, round_by(height, factor)), max(factor, round_by(width, factor))
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h_bar = max(factor, floor_by(height / beta, factor))
        w_bar = max(factor, floor_by(width / beta, factor))
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar, w_bar = ceil_by(height * beta, factor), ceil_by(width * beta, factor)
    return h_bar, w_bar


def frame_range(total: int, video_fps: float, options: VideoOptions) -> tuple[int, int, int]:
    """(first, last, count) of the frames between `video_start` and `video_end` seconds (the whole clip when both
    are unset); start rounds up, end down, both clamped to the clip. Raises SampleError for an empty range."""
    if video_fps <= 0 or total <= 0:
        raise SampleError(f"video has no frames to sample ({total} frames at {video_fps:g} fps)")
    start, end = options.video_start, options.video_end
    if start is None and end is None:
        return 0, total - 1, total
    duration = total / video_fps
    first = math.ceil(max(0.0, min(start, duration)) * video_fps) if start is not None else 0
    last = min(math.floor(max(0.0, min(end, duration)) * video_fps), total - 1) if end is not None else total - 1
    if first >= last:
        raise SampleError(f"video_start {start} s to video_end {end} s leaves no frames of a {duration:.2f} s clip")
    return first, last, last - first + 1


def sample_count(total: int, video_fps: float, options: VideoOptions) -> int:
    """How many frames to sample from `total` frames at `video_fps` (see the module docstring)."""
    if options.nframes is not None:
        n = round_by(options.nframes, FRAME_FACTOR)
    else:
        fps = options.fps if options.fps is not None else FPS
        low = ceil_by(options.min_frames if options.min_frames is not None else FPS_MIN_FRAMES, FRAME_FACTOR)
        high = floor_by(options.max_frames if options.max_frames is not None else min(FPS_MAX_FRAMES, total),
                        FRAME_FACTOR)  # fmt: skip
        n = total / video_fps * fps
        n = floor_by(min(min(max(n, low), high), total), FRAME_FACTOR)
    if total < FRAME_FACTOR:
        raise SampleError(f"video too short: {total} frame, and at least {FRAME_FACTOR} frames are sampled "
                          "(one temporal patch); pass it as an image instead")  # fmt: skip
    if not FRAME_FACTOR <= n <= total:
        raise SampleError(f"cannot sample {n} frames from a video of {total} frames (nframes must lie in "
                          f"{FRAME_FACTOR}..{total})")  # fmt: skip
    return n


def frame_indices(first: int, last: int, n: int) -> list[int]:
    """`torch.linspace(first, last, n).round()` without torch: float32 steps, the first half counted from `first`
    and the second from `last` (torch's CPU kernel), rounded half to even."""
    if n == 1:
        return [first]
    step = np.float32((np.float32(last) - np.float32(first)) / np.float32(n - 1))
    i = np.arange(n)
    half = n // 2
    values = np.where(i < half, np.float32(first) + step * i.astype(np.float32),
                      np.float32(last) - step * (n - 1 - i).astype(np.float32))  # fmt: skip
    return [int(v) for v in np.round(values.astype(np.float32))]


def frame_budget(nframes: int, factor: int, options: VideoOptions) -> tuple[float, float]:
    """(min_pixels, max_pixels) of one sampled frame (see the module docstring); a record's `max_pixels` can only
    lower the budget."""
    min_pixels = options.min_pixels if options.min_pixels is not None else VIDEO_MIN_TOKENS * factor * factor
    total = options.total_pixels if options.total_pixels is not None else MODEL_SEQ_LEN * factor * factor * 0.9
    max_pixels = max(min(VIDEO_MAX_TOKENS * factor * factor, total / nframes * FRAME_FACTOR), int(min_pixels * 1.05))
    if options.max_pixels is not None:
        max_pixels = min(options.max_pixels, max_pixels)
    return min_pixels, max_pixels


def frame_size(height: int, width: int, nframes: int, factor: int, options: VideoOptions) -> tuple[int, int]:
    """(height, width) every sampled frame of a `height` x `width` video is resized to."""
    return smart_resize(height, width, factor, *frame_budget(nframes, factor, options))


def group_timestamps(indices: list[int], fps: float, group: int) -> list[float]:
    """Seconds of each group of `group` sampled frames (the mean of its first and last frame's time), as Qwen3-VL's
    processor writes `<t seconds>` before each temporal patch; a short last group repeats the last index."""
    indices = list(indices)
    if len(indices) % group:
        indices += [indices[-1]] * (group - len(indices) % group)
    seconds = [i / fps for i in indices]
    return [(seconds[k] + seconds[k + group - 1]) / 2 for k in range(0, len(seconds), group)]
