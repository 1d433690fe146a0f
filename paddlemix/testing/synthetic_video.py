"""Synthetic clips written with PyAV for tests and the video demo: a square moving left or right, numbered frames.

Clips are H.264 in MP4 (yuv420p, so sides are even) at a constant frame rate; `faststart` puts the header before
the frames (a cut file then keeps a header that promises frames it no longer holds). `write_timed_clip` shows each
frame at a given time (a variable frame rate), frames numbered so a decoded frame tells which one it is.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from fractions import Fraction
from pathlib import Path

import numpy as np

DIRECTIONS = ("left", "right")


def write_clip(
    path: str | Path, frames: Iterable[np.ndarray], fps: int = 10, faststart: bool = False, gop: int = 12
) -> Path:
    """Encode uint8 RGB frames [H, W, 3] (even sides) into `path`; streams frame by frame."""
    import av

    path = Path(path)
    options = {"movflags": "faststart"} if faststart else {}
    with av.open(str(path), "w", options=options) as out:
        stream = None
        for frame in frames:
            if stream is None:
                stream = out.add_stream("libx264", rate=Fraction(fps))
                stream.height, stream.width = frame.shape[:2]
                stream.pix_fmt = "yuv420p"
                stream.codec_context.gop_size = gop
                stream.options = {"crf": "18", "preset": "ultrafast", "tune": "zerolatency"}
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                out.mux(packet)
        if stream is not None:
            for packet in stream.encode():
                out.mux(packet)
    return path


def moving_square(
    direction: str, frames: int = 8, size: int = 64, side: int = 16, seed: int = 0, speed: float | None = None
) -> Iterator[np.ndarray]:
    """Frames of a bright square moving to the `direction` ("left"/"right") on a dark background, at a constant
    speed. The colour and row are drawn from `seed`. Without `speed`, it crosses the frame once from one edge to
    the other. With `speed` (pixels per frame), it starts at a random column and wraps around at the edges, so any
    single frame looks the same for both directions: only the motion tells them apart."""
    rng = np.random.default_rng(seed)
    colour = rng.integers(160, 256, size=3).astype(np.uint8)
    top = int(rng.integers(0, size - side + 1))
    if speed is None:
        start, step = (size - side, -(size - side)) if direction == "left" else (0, size - side)
        positions = [round(start + step * k / max(frames - 1, 1)) for k in range(frames)]
    else:
        start, sign = int(rng.integers(0, size)), -1 if direction == "left" else 1
        positions = [round(start + sign * speed * k) % size for k in range(frames)]
    columns = np.arange(side)
    for x in positions:
        frame = np.full((size, size, 3), 32, dtype=np.uint8)
        frame[top : top + side, (x + columns) % size] = colour
        yield frame


def numbered_frames(frames: int, size: int = 32) -> Iterator[np.ndarray]:
    """Frames whose grey level encodes their number (frame k: level 2k mod 256), for checking which were read."""
    for k in range(frames):
        yield np.full((size, size, 3), (2 * k) % 256, dtype=np.uint8)


def two_digit_frame(k: int, size: int = 32) -> np.ndarray:
    """Frame k (0..255) as two grey halves, its number's base-16 digits: left 16 (k mod 16) + 8, right
    16 (k div 16) + 8, so lossy coding (a few levels off) still reads back exactly (`frame_number`)."""
    frame = np.empty((size, size, 3), dtype=np.uint8)
    frame[:, : size // 2] = 16 * (k % 16) + 8
    frame[:, size // 2 :] = 16 * (k // 16 % 16) + 8
    return frame


def frame_number(frame: np.ndarray) -> int:
    """The number `two_digit_frame` drew into a decoded (possibly resized) uint8 frame [H, W, 3]."""
    half = frame.shape[1] // 2
    low, high = frame[:, : half // 2].mean(), frame[:, half + half // 2 :].mean()
    return int(round((low - 8) / 16)) + 16 * int(round((high - 8) / 16))


def write_timed_clip(
    path: str | Path, times_ms: Sequence[int], size: int = 32, gop: int = 30, container: str | None = None
) -> Path:
    """A clip whose frame k (`two_digit_frame(k)`) is shown at `times_ms[k]` milliseconds: a variable frame rate
    when the gaps differ (as phone and screen recordings have). H.264 with B-frames (decode order differs from
    presentation order) and a keyframe every `gop` frames; `container` as PyAV names formats (default: from the
    file name)."""
    import av

    path = Path(path)
    with av.open(str(path), "w", format=container) as out:
        stream = out.add_stream("libx264", rate=Fraction(30))
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        stream.codec_context.time_base = Fraction(1, 1000)
        stream.codec_context.gop_size = gop
        stream.options = {"crf": "10", "bf": "2", "preset": "fast"}
        for k, t in enumerate(times_ms):
            frame = av.VideoFrame.from_ndarray(two_digit_frame(k, size), format="rgb24")
            frame.pts, frame.time_base = int(t), Fraction(1, 1000)
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path
