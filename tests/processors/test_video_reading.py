"""Reading videos: the sampled frames are the right ones (with seeks over long gaps, and at a variable frame rate
the frames qwen-vl-utils' decoders count), a long clip is read in bounded memory, and every kind of bad video
(a header promising more or fewer frames than the clip holds included) is a skip with its reason, never a hang, a
crash or other frames than planned."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from paddlemix.datasets.conversation import SampleError, VideoRef
from paddlemix.processors.video import SEEK_GAP, VideoReader
from paddlemix.processors.video_sampling import VideoOptions, frame_indices, frame_range, sample_count
from paddlemix.testing.synthetic_video import (
    frame_number,
    moving_square,
    numbered_frames,
    write_clip,
    write_timed_clip,
)


@pytest.fixture(scope="module")
def numbered(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_clip(tmp_path_factory.mktemp("v") / "numbered.mp4", numbered_frames(1000, 32), fps=25, gop=25)


def test_sampled_frames_are_the_planned_ones(numbered: Path) -> None:
    reader = VideoReader(28)
    for options in (VideoOptions(), VideoOptions(max_frames=8), VideoOptions(video_start=3.3, video_end=20.0)):
        frames, plan = reader.load(VideoRef(str(numbered), options))
        levels = frames[:, 0, 0, 0].astype(int)  # frame k has grey level 2k mod 256 (lossy coding: +-3)
        expected = np.asarray([(2 * i) % 256 for i in plan.indices])
        assert len(frames) == len(plan.indices) and np.abs(levels - expected).max() <= 3, (options, plan.indices)
    assert np.diff(reader.plan(VideoRef(str(numbered), VideoOptions(max_frames=8))).indices).min() > SEEK_GAP


# 120 frames bunched 10 ms apart, then 120 frames 300 ms apart: frame k is not at k / (average rate) seconds
BUNCHED_MS = [10 * k for k in range(120)] + [1200 + 300 * k for k in range(120)]


@pytest.mark.parametrize("name", ["bunched.mp4", "bunched.mkv"])
def test_variable_frame_rate_clip_gives_the_counted_frames(tmp_path: Path, name: str) -> None:
    """qwen-vl-utils (decord, torchcodec; torchvision decodes all) takes frame k = the k-th frame in presentation
    order at indices linspace(first, last, nframes).round(), the frame count and average rate from the stream.
    Seeks (max_frames 4: gaps of 80 frames) must land on the same frames."""
    import av

    clip = write_timed_clip(tmp_path / name, BUNCHED_MS)
    with av.open(str(clip)) as c:
        stream = c.streams.video[0]
        average_fps = float(stream.average_rate)
        counted = sum(1 for _ in c.decode(stream))
    assert counted == len(BUNCHED_MS)
    reader = VideoReader(28)
    for options in (VideoOptions(), VideoOptions(max_frames=4), VideoOptions(nframes=10),
                    VideoOptions(video_start=0.5, video_end=20.0, max_frames=6)):  # fmt: skip
        first, last, count = frame_range(counted, average_fps, options)
        expected = frame_indices(first, last, sample_count(count, average_fps, options))
        frames, plan = reader.load(VideoRef(str(clip), options))
        assert list(plan.indices) == expected, options
        assert [frame_number(f) for f in frames] == expected, options


def test_long_clip_is_read_in_bounded_memory(tmp_path: Path) -> None:
    """1200 frames of 640x480 (1.1 GB as RGB) sampled to 16: the reader's peak memory stays far below the clip's."""
    clip = write_clip(tmp_path / "long.mp4", moving_square("right", 1200, 480, side=64), fps=30, gop=30)
    warm = write_clip(tmp_path / "warm.mp4", moving_square("right", 8, 32), fps=30)
    script = textwrap.dedent(f"""
        from paddlemix.datasets.conversation import VideoRef
        from paddlemix.processors.video import VideoReader
        from paddlemix.processors.video_sampling import VideoOptions

        def peak():  # VmHWM: the peak resident set since the last reset, in bytes
            line = next(x for x in open("/proc/self/status") if x.startswith("VmHWM"))
            return int(line.split()[1]) * 1024

        reader = VideoReader(28)
        reader.load(VideoRef({str(warm)!r}))  # imports and codec set-up on another clip
        open("/proc/self/clear_refs", "w").write("5")  # reset the peak to the current resident set
        before = peak()
        frames, plan = reader.load(VideoRef({str(clip)!r}, VideoOptions(max_frames=16)))
        print(len(plan.indices), frames.nbytes, peak() - before)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=Path.cwd())
    n, frames_bytes, growth = (int(x) for x in out.stdout.split()[-3:])
    print(f"16 of 1200 frames: peak RSS grew {growth / 2**20:.1f} MiB (frames {frames_bytes / 2**20:.1f} MiB)")
    assert n == 16 and growth < 200 * 2**20  # the clip's frames would take 1,105 MiB


def empty_clip(path: Path) -> Path:
    """A video header with no frames at all (the cut is right after the header)."""
    import av

    full = write_clip(path.with_name("full_" + path.name), moving_square("left", 20, 32), fps=10, faststart=True)
    with av.open(str(full)) as c:
        first = next(p.pos for p in c.demux(c.streams.video[0]) if p.pos is not None)
    path.write_bytes(full.read_bytes()[:first])
    return path


def lying_clip(path: Path) -> Path:
    """A clip whose header promises 100 frames while the file holds 50 (cut at a packet boundary)."""
    import av

    full = write_clip(path.with_name("full_" + path.name), moving_square("left", 100, 32), fps=10, faststart=True)
    with av.open(str(full)) as c:
        positions = [p.pos for p in c.demux(c.streams.video[0]) if p.pos is not None]
    path.write_bytes(full.read_bytes()[: positions[50]])
    return path


def short_header_clip(path: Path) -> Path:
    """An AVI whose header says 10 frames while it holds 20 (every frame indexed): sampling by the header would
    take frames of the first half only."""
    import struct

    import av

    with av.open(str(path), "w") as out:
        stream = out.add_stream("mjpeg", rate=10)
        stream.width = stream.height = 32
        stream.pix_fmt = "yuvj420p"
        for frame in numbered_frames(20, 32):
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    data = bytearray(path.read_bytes())
    stream_header, main_header = data.index(b"strh") + 8, data.index(b"avih") + 8
    data[stream_header + 32 : stream_header + 36] = struct.pack("<I", 10)  # strh dwLength
    data[main_header + 16 : main_header + 20] = struct.pack("<I", 10)  # avih dwTotalFrames
    path.write_bytes(bytes(data))
    return path


def no_video_stream(folder: Path) -> Path:
    """An MP4 header only, without a stream description the reader can use."""
    import av

    path = folder / "nostream.mp4"
    out = av.open(str(path), "w")
    stream = out.add_stream("libx264", rate=Fraction(10))
    stream.width = stream.height = 32
    out.start_encoding()
    out.close()
    return path


@pytest.mark.parametrize(
    ("make", "reader", "reason", "from_header"),
    [
        (lambda d: d / "missing.mp4", {}, "video not found", True),
        (lambda d: (d / "junk.mp4").write_bytes(b"not a video" * 100) and d / "junk.mp4", {}, "video cannot be decoded", True),
        (no_video_stream, {}, "video has no video stream", True),
        (lambda d: empty_clip(d / "empty.mp4"), {}, "video has no frames", False),
        (lambda d: lying_clip(d / "lying.mp4"), {}, "video ended early", False),
        (lambda d: short_header_clip(d / "short.avi"), {}, "video holds more frames than its header says", False),
        (lambda d: write_clip(d / "long.mp4", numbered_frames(60, 32), fps=10), {"max_seconds": 5}, "video too long", True),
        (lambda d: write_clip(d / "big.mp4", numbered_frames(4, 64), fps=10), {"max_pixels": 64 * 63}, "video frames too large", True),
    ],
)  # fmt: skip
def test_bad_videos_are_skipped_with_reason(
    tmp_path: Path, make, reader: dict, reason: str, from_header: bool
) -> None:
    target = make(tmp_path)
    video_reader = VideoReader(28, **reader)
    if from_header:  # known before any frame is decoded: check_data and packing plans report it
        with pytest.raises(SampleError, match=reason):
            video_reader.plan(VideoRef(str(target)))
    else:  # the header looks fine: the skip comes when the frames are read
        video_reader.plan(VideoRef(str(target)))
    with pytest.raises(SampleError, match=reason):
        video_reader.load(VideoRef(str(target)))


def test_frame_list_problems_are_skips_that_speak_of_the_video(tmp_path: Path) -> None:
    """A frame list's bad image is a skip named as a video frame (check_data counts "video frame not found"), when
    planning (sizes) and when loading (pixels)."""
    from PIL import Image

    Image.new("RGB", (32, 32)).save(tmp_path / "a.png")
    (tmp_path / "broken.png").write_bytes(Image.new("RGB", (32, 32)).tobytes()[:20])
    missing = VideoRef((str(tmp_path / "a.png"), str(tmp_path / "b.png")))
    broken = VideoRef((str(tmp_path / "a.png"), str(tmp_path / "broken.png")))
    for video, reason in ((missing, "video frame not found: "), (broken, "video frame cannot be decoded: ")):
        for read in (VideoReader(28).plan, VideoReader(28).load):
            with pytest.raises(SampleError, match=reason) as err:
                read(video)
            assert "image" not in str(err.value).split(":")[0]


def test_video_from_a_data_uri(tmp_path: Path) -> None:
    import base64

    from paddlemix.datasets.sources import video_ref

    clip = write_clip(tmp_path / "c.mp4", numbered_frames(20, 32), fps=10)
    uri = "data:video/mp4;base64," + base64.b64encode(clip.read_bytes()).decode()
    ref = video_ref(uri, tmp_path)
    frames, plan = VideoReader(28).load(ref)
    assert plan.indices == VideoReader(28).plan(VideoRef(str(clip))).indices and len(frames) == 4
    assert str(ref).startswith("data URI (")  # skip reasons name it, not its bytes


def test_sparse_keyframes_are_read_without_looping(tmp_path: Path) -> None:
    """Keyframes 250 frames apart, sampled frames ~143 apart: each seek lands far before its frame; the reader
    decodes forward to it instead of seeking to the same keyframe again (that looped forever once)."""
    clip = write_clip(tmp_path / "gop.mp4", numbered_frames(1000, 32), fps=25, gop=250)
    script = textwrap.dedent(f"""
        from paddlemix.datasets.conversation import VideoRef
        from paddlemix.processors.video import VideoReader
        from paddlemix.processors.video_sampling import VideoOptions
        frames, plan = VideoReader(28).load(VideoRef({str(clip)!r}, VideoOptions(max_frames=8)))
        print(" ".join(str(int(f[0, 0, 0])) for f in frames), "|", " ".join(str(i) for i in plan.indices))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True)
    levels, indices = (part.split() for part in out.stdout.strip().split("|"))
    assert len(levels) == 8
    assert all(abs(int(v) - (2 * int(i)) % 256) <= 3 for v, i in zip(levels, indices))
