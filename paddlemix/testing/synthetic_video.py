"""Synthetic clips written with PyAV for tests and the video demo: a square moving left or right, numbered frames.

Clips are H.264 in MP4 (yuv420p, so sides are even) at a constant frame rate; `faststart` puts the header before
the frames (a cut file then keeps a header that promises frames it no longer holds).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
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
