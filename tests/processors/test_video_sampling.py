"""Frame sampling and frame sizes against qwen-vl-utils 0.0.14's formulas, written out here as a plain oracle."""

from __future__ import annotations

import math

import pytest

from paddlemix.datasets.conversation import SampleError
from paddlemix.processors.video_sampling import (
    VideoOptions,
    frame_budget,
    frame_indices,
    frame_range,
    frame_size,
    group_timestamps,
    sample_count,
)


def oracle_count(total: int, video_fps: float, fps: float = 2.0, min_frames: int = 4, max_frames: int = 768) -> int:
    low = math.ceil(min_frames / 2) * 2
    high = math.floor(min(max_frames, total) / 2) * 2
    return math.floor(min(max(total / video_fps * fps, low), high) / 2) * 2


@pytest.mark.parametrize(
    ("total", "video_fps", "fps"),
    [(300, 30.0, 2.0), (301, 29.97, 2.0), (25, 25.0, 2.0), (9, 24.0, 2.0), (100000, 30.0, 2.0), (120, 24.0, 1.0),
     (90, 30.0, 4.0), (17, 8.0, 3.0)],
)  # fmt: skip
def test_sample_count_follows_the_formula(total: int, video_fps: float, fps: float) -> None:
    assert sample_count(total, video_fps, VideoOptions(fps=fps)) == oracle_count(total, video_fps, fps)


def test_sample_count_worked_values() -> None:
    assert sample_count(300, 30.0, VideoOptions()) == 20  # 10 s at 2 fps
    assert sample_count(9, 24.0, VideoOptions()) == 4  # short clip: min_frames 4
    assert sample_count(100000, 30.0, VideoOptions()) == 768  # long clip: max_frames 768
    assert sample_count(300, 30.0, VideoOptions(max_frames=7)) == 6  # floored to even
    assert sample_count(300, 30.0, VideoOptions(min_frames=25)) == 26  # ceiled to even
    assert sample_count(300, 30.0, VideoOptions(nframes=9)) == 8  # explicit, rounded to even (half to even)
    assert sample_count(300, 30.0, VideoOptions(nframes=11)) == 12


def test_sample_count_refuses_too_few_frames() -> None:
    with pytest.raises(SampleError, match="video too short: 1 frame, and at least 2 frames are sampled"):
        sample_count(1, 30.0, VideoOptions())
    with pytest.raises(
        SampleError, match=r"cannot sample 12 frames from a video of 10 frames \(nframes must lie in 2\.\.10\)"
    ):
        sample_count(10, 30.0, VideoOptions(nframes=12))


def test_fps_and_nframes_together_are_refused_as_qwen_vl_utils_does() -> None:
    with pytest.raises(SampleError, match='sets both "fps" and "nframes"'):
        VideoOptions.from_record({"type": "video", "video": "a.mp4", "nframes": 4, "fps": 1})
    assert VideoOptions.from_record({"type": "video", "video": "a.mp4", "nframes": 4}).nframes == 4


@pytest.mark.parametrize(("first", "last", "n"), [(0, 299, 20), (0, 99, 4), (15, 240, 8), (0, 2999, 768), (3, 9, 6)])
def test_indices_are_a_rounded_linspace(first: int, last: int, n: int) -> None:
    got = frame_indices(first, last, n)
    assert len(got) == n and got[0] == first and got[-1] == last
    assert got == sorted(got) and len(set(got)) == n
    step = (last - first) / (n - 1)
    assert all(abs(g - (first + k * step)) <= 0.5 + 1e-3 for k, g in enumerate(got))


def test_indices_round_half_to_even() -> None:
    assert frame_indices(0, 3, 3) == [0, 2, 3]  # 1.5 -> 2
    assert frame_indices(0, 5, 3) == [0, 2, 5]  # 2.5 -> 2
    assert frame_indices(0, 9, 4) == [0, 3, 6, 9]


def test_frame_range_in_seconds() -> None:
    assert frame_range(300, 30.0, VideoOptions()) == (0, 299, 300)
    assert frame_range(300, 30.0, VideoOptions(video_start=1.01, video_end=4.0)) == (31, 120, 90)
    assert frame_range(300, 30.0, VideoOptions(video_end=100.0)) == (0, 299, 300)  # clamped to the clip
    with pytest.raises(SampleError, match="leaves no frames"):
        frame_range(300, 30.0, VideoOptions(video_start=5.0, video_end=5.0))


def test_frame_budget_formula() -> None:
    f = 28
    low, high = frame_budget(20, f, VideoOptions())
    assert low == 128 * f * f
    assert high == min(768 * f * f, 128000 * f * f * 0.9 / 20 * 2)  # 768 f^2: short clips get the full budget
    _, many = frame_budget(768, f, VideoOptions())
    assert many == max(128000 * f * f * 0.9 / 768 * 2, int(128 * f * f * 1.05))
    _, tight = frame_budget(20, f, VideoOptions(total_pixels=20 * 50 * f * f))
    assert tight == int(128 * f * f * 1.05)  # never below 1.05 min_pixels
    _, capped = frame_budget(20, f, VideoOptions(max_pixels=200 * f * f))
    assert capped == 200 * f * f  # a record's max_pixels only lowers it


def test_frame_size_rounds_to_the_factor() -> None:
    assert frame_size(480, 640, 20, 28, VideoOptions()) == (476, 644)  # 306,544 px < 768 f^2 = 602,112
    h, w = frame_size(1080, 1920, 20, 32, VideoOptions())
    assert h % 32 == 0 and w % 32 == 0 and h * w <= 768 * 32 * 32
    assert frame_size(32, 32, 20, 28, VideoOptions()) == (336, 336)  # scaled up to 128 f^2


def test_group_timestamps_average_each_pair() -> None:
    assert group_timestamps([0, 15, 30, 45], 30.0, 2) == [0.25, 1.25]
    assert group_timestamps([0, 1, 2], 2.0, 2) == [0.25, 1.0]  # odd: last index repeated
