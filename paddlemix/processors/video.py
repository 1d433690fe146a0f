"""Read the videos of a sample: plan the sampled frames from container metadata, then decode only those frames.

A video is a file (path, http(s) URL, data URI or record bytes) read with PyAV (FFmpeg bundled in its wheel; it
seeks) or a list of frame images. `VideoReader.plan` needs only the container header (frame count, frame rate, frame
size; a container whose header counts no frames, such as Matroska, WebM or MPEG-TS, has its packets counted,
nothing decoded), so sample lengths are known without decoding. Frame k is the k-th frame in presentation order, as
qwen-vl-utils' decoders count frames, also at a variable frame rate. `VideoReader.load` first reads the clip's
packets (not decoded) for their timestamps and count, which must equal the planned count; then it streams the
clip: frames are decoded in order, each known by its timestamp, only the sampled ones are converted and resized
(uint8 RGB), and a gap of more than `SEEK_GAP` frames to the next sampled frame is crossed by seeking to the keyframe
before it, so a long clip never sits in memory. Where timestamps cannot be trusted the clip is decoded from its
start and its frames counted.

Sampling and sizes follow qwen-vl-utils 0.0.14 (`video_sampling`); frames are resized with Pillow's bicubic filter,
as the image processors resize images. A frame list is sampled whole (every frame, padded to an even count by
repeating the last); as in qwen-vl-utils each frame is first sized by the image rule (`min_pixels`/`max_pixels`,
default 4 f^2 to 16384 f^2), then the frames by the video budget like a clip's; they play at the part's `fps`
(default 2; qwen-vl-utils' `sample_fps`).

Every problem with one video (missing, not a video, no frames, fewer or more frames than its header says, longer
than `max_seconds`, frames larger than the pixel limit) raises `SampleError` with a reason.
"""

from __future__ import annotations

import io
from array import array
from collections.abc import Generator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from paddlemix.datasets.conversation import ImageBytes, ImageRef, RelativeImagePath, SampleError, VideoRef
from paddlemix.processors.images import DEFAULT_MAX_IMAGE_PIXELS, ImageReader, is_url
from paddlemix.processors.video_sampling import (
    FPS,
    FRAME_FACTOR,
    VideoOptions,
    ceil_by,
    frame_indices,
    frame_range,
    frame_size,
    sample_count,
    smart_resize,
)

SEEK_GAP = 64  # frames: a larger gap to the next sampled frame is crossed by seeking
IMAGE_MIN_TOKENS, IMAGE_MAX_TOKENS = 4, 16384  # qwen-vl-utils' per-image budget (frame lists), in f^2 units
DEFAULT_MAX_VIDEO_SECONDS = 3 * 3600.0


@dataclass(frozen=True)
class VideoMeta:
    """What a container says of its video stream: frames (the header's count; the counted packets where the header
    has none, or when loading), average frame rate (frames per second) and frame size in pixels."""

    frames: int
    fps: float
    width: int
    height: int


@dataclass(frozen=True)
class VideoPlan:
    """The frames a model sees of one video.

    `indices`: sampled frame numbers of the clip (a frame list: 0..n-1, padded); `fps`: the clip's frame rate, which
    turns indices into seconds; `sample_fps`: sampled frames per second of the sampled range (qwen-vl-utils'
    `sample_fps`, which Qwen2.5-VL's time axis uses); `height`/`width`: pixel size of every sampled frame.
    """

    indices: tuple[int, ...]
    fps: float
    sample_fps: float
    height: int
    width: int


def _open_source(ref: ImageRef, reader: ImageReader) -> str | io.BytesIO:
    if isinstance(ref, ImageBytes):
        return io.BytesIO(ref.data)
    if is_url(ref):
        return str(reader.fetch(ref, "video"))
    if not Path(ref).is_file():
        hint = f" ({ref.not_found_hint()})" if isinstance(ref, RelativeImagePath) else ""
        raise SampleError(f"video not found: {ref}{hint}")
    return str(ref)


def _av() -> Any:
    try:
        import av
    except ImportError:
        raise SampleError("videos need PyAV: pip install av (or the package's video extra)") from None
    return av


class _Container:
    """An opened container and its first video stream; problems become `SampleError`s.

    Frame k of a clip is the k-th frame in presentation order, as qwen-vl-utils' decoders count (decord and
    torchcodec index frames so; torchvision decodes them all in order): the frame whose timestamp is the k-th
    smallest of the stream's packets. Frames are found by that timestamp, not by time x average rate, so a
    variable-frame-rate clip gives the same frames as counting decoded frames one by one.
    """

    def __init__(self, ref: ImageRef, reader: ImageReader):
        self.ref, self.reader = ref, reader
        self._open()

    def _open(self) -> None:
        av = _av()
        source = _open_source(self.ref, self.reader)
        try:
            self.container = av.open(source)
        except (av.FFmpegError, OSError, ValueError) as err:
            raise SampleError(f"video cannot be decoded: {self.ref} ({err})") from None
        if not self.container.streams.video:
            self.container.close()
            raise SampleError(f"video has no video stream: {self.ref}")
        self.stream = self.container.streams.video[0]

    def reopen(self) -> None:
        """Back to the first packet (a fresh demuxer: no seek whose landing could differ between containers)."""
        self.container.close()
        self._open()

    def __enter__(self) -> _Container:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.container.close()

    def header_frames(self) -> int:
        """Frames the header promises: the sample table's frames without those an edit list cuts (MP4/MOV, whose
        whole index is in the header), else the header's frame count; 0 when it has none (Matroska, WebM, MPEG-TS)."""
        s = self.stream
        frames = int(s.frames or 0)
        entries = s.index_entries
        if frames > 0 and len(entries) == frames:
            return sum(not entry.is_discard for entry in entries)
        return frames

    def packet_times(self) -> tuple[int, np.ndarray | None]:
        """(frames the stream holds, their timestamps sorted) from one pass over its packets, decoding nothing;
        packets an edit list cuts are no frames. Timestamps are None when a frame has none or two share one (its
        frames are then counted in decode order). Leaves the container at its end (see `reopen`)."""
        av = _av()
        times, usable = array("q"), True
        try:
            for packet in self.container.demux(self.stream):
                if packet.size == 0 or packet.is_discard:
                    continue
                if packet.pts is None:
                    usable = False
                times.append(packet.pts if packet.pts is not None else 0)
        except av.FFmpegError:
            pass  # a damaged or cut tail: the frames before it count; a clip shorter than its header is a skip later
        ordered = np.sort(np.frombuffer(times, dtype=np.int64)) if times else np.zeros(0, np.int64)
        if usable and len(ordered) > 1 and (np.diff(ordered) == 0).any():
            usable = False
        return len(ordered), ordered if usable else None

    def meta(self, frames: int | None = None) -> VideoMeta:
        """The clip's frames (`frames`, else the header's, else counted over the packets), frame rate and size."""
        s = self.stream
        rate = s.average_rate or s.guessed_rate or s.base_rate
        fps = float(rate) if rate else 0.0
        if frames is None:
            frames = self.header_frames() or self.packet_times()[0]
        width, height = s.codec_context.width, s.codec_context.height
        if frames <= 0 or fps <= 0 or not width or not height:
            raise SampleError(f"video has no frames: {self.ref} ({frames} frames at {fps:g} fps, {width}x{height})")
        return VideoMeta(frames, fps, width, height)

    def frames(self, wanted: list[int], times: np.ndarray | None, total: int) -> Iterator[tuple[int, Any]]:
        """(index, av.VideoFrame) of each wanted frame (sorted, distinct indices into `times`, the sorted frame
        timestamps of `packet_times`, of `total` frames): decoded in order, a gap of more than SEEK_GAP frames
        crossed by seeking to the keyframe before the next one, each frame known by its timestamp. Without
        timestamps, or when a seek or a frame does not match them, the clip is decoded from its start and its
        frames counted instead (a frame may then be yielded twice: the later one is right)."""
        av = _av()
        try:
            if times is not None:
                done = yield from self._by_time(wanted, times)
                if done:
                    return
                self.reopen()
            yield from self._in_order(wanted, total)
        except av.FFmpegError as err:
            raise SampleError(f"video cannot be decoded: {self.ref} ({err})") from None

    def _by_time(self, wanted: list[int], times: np.ndarray) -> Generator[tuple[int, Any], None, bool]:
        """`frames` by timestamps; returns False when they cannot be trusted (a decoded frame without a timestamp
        or with one no packet has, a seek that lands past its frame, a wanted frame the decoder skips or never
        reaches): the caller then counts frames instead, and what was yielded is yielded again."""
        s = self.stream
        j, current, target = 0, -1, -1
        while j < len(wanted):
            if wanted[j] - current > SEEK_GAP:  # to the keyframe before it; targets only grow, so no loop
                target = wanted[j]
                self.container.seek(int(times[target]), stream=s, backward=True)
            landed, ended = False, True
            for frame in self.container.decode(s):
                k = int(np.searchsorted(times, frame.pts)) if frame.pts is not None else len(times)
                if k == len(times) or times[k] != frame.pts or (not landed and k > wanted[j]):
                    return False
                landed = True
                while j < len(wanted) and wanted[j] == k:
                    yield k, frame
                    j += 1
                if j < len(wanted) and wanted[j] < k:
                    return False
                current = k
                # seek again only past the last target: the keyframe before a target may lie far before it
                if j == len(wanted) or (k >= target and wanted[j] - k > SEEK_GAP):
                    ended = False
                    break
            if ended:
                break
        return j == len(wanted)

    def _in_order(self, wanted: list[int], total: int) -> Iterator[tuple[int, Any]]:
        """`frames` by counting decoded frames from the first; every frame is decoded, and a count other than
        `total` (the packets') is a SampleError."""
        j, k = 0, -1
        for k, frame in enumerate(self.container.decode(self.stream)):
            while j < len(wanted) and wanted[j] == k:
                yield k, frame
                j += 1
        if j < len(wanted):
            raise SampleError(f"video ended early: {self.ref} has no frame {wanted[j]} (it decodes to {k + 1} "
                              f"frames of {total} packets)")  # fmt: skip
        if k + 1 != total:
            raise SampleError(f"video frames do not match its packets: {self.ref} decodes to {k + 1} frames from "
                              f"{total} packets")  # fmt: skip


def check_frame_count(ref: ImageRef, promised: int, held: int) -> None:
    """Raise SampleError when a clip's packets (`held` frames) are not the `promised` frames of its header (0: it
    promises none): the sampled frames and their token count were planned from the header."""
    if held == 0:
        raise SampleError(f"video has no frames: {ref} holds no decodable frame (its header promises {promised})")
    if promised and held < promised:
        raise SampleError(f"video ended early: {ref} holds {held} frames, its header promises {promised}")
    if promised and held > promised:
        raise SampleError(f"video holds more frames than its header says: {ref} holds {held} frames, its header "
                          f"says {promised}; remux it so the header counts them all")  # fmt: skip


@contextmanager
def frame_list_errors() -> Iterator[None]:
    """Problems with a frame-list image, reworded for the video they belong to ("image not found: f.png" ->
    "video frame not found: f.png"), so skip reasons and their counts speak of videos."""
    try:
        yield
    except SampleError as err:
        text = str(err)
        raise SampleError(f"video frame {text[len('image ') :]}" if text.startswith("image ")
                          else f"video frame list: {text}") from None  # fmt: skip


def resize_frame(image: Image.Image, height: int, width: int) -> np.ndarray:
    """uint8 [height, width, 3] of an RGB image, resized with Pillow's bicubic filter when its size differs."""
    if image.size != (width, height):
        image = image.resize((width, height), resample=Image.BICUBIC)
    return np.asarray(image, dtype=np.uint8)


class VideoReader:
    """Plans and reads `VideoRef`s for a model whose frames are cut into `factor` x `factor` pixel tokens.

    `defaults` are the run's options under each part's own (`video_fps`, `video_maxlen`, `video_resolution`);
    `images` reads frame-list images and fetches URLs; `max_seconds` bounds a clip's duration and `max_pixels` one
    frame's pixels (a decompression-bomb guard, as for images).
    """

    def __init__(
        self, factor: int, defaults: VideoOptions | None = None, images: ImageReader | None = None,
        max_seconds: float | None = DEFAULT_MAX_VIDEO_SECONDS, max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
    ):  # fmt: skip
        self.factor = factor
        self.defaults = defaults or VideoOptions()
        self.images = images or ImageReader()
        self.max_seconds = max_seconds
        self.max_pixels = max_pixels

    def options(self, video: VideoRef) -> VideoOptions:
        return (video.options or VideoOptions()).over(self.defaults)

    def check(self, ref: ImageRef, meta: VideoMeta) -> None:
        seconds = meta.frames / meta.fps
        if self.max_seconds is not None and seconds > self.max_seconds:
            raise SampleError(f"video too long: {ref} lasts {seconds:.0f} s, more than max_video_seconds "
                              f"{self.max_seconds:g}")  # fmt: skip
        if self.max_pixels is not None and meta.width * meta.height > self.max_pixels:
            raise SampleError(f"video frames too large ({meta.width}x{meta.height}): {ref} has more than "
                              f"max_image_pixels {self.max_pixels} per frame")  # fmt: skip

    def probe(self, ref: ImageRef) -> VideoMeta:
        """The header of a video file (its frames counted over the packets when the header has no count);
        SampleError when it cannot be used."""
        with _Container(ref, self.images) as c:
            meta = c.meta()
        self.check(ref, meta)
        return meta

    def _clip_plan(self, meta: VideoMeta, options: VideoOptions) -> VideoPlan:
        first, last, count = frame_range(meta.frames, meta.fps, options)
        n = sample_count(count, meta.fps, options)
        height, width = frame_size(meta.height, meta.width, n, self.factor, options)
        return VideoPlan(tuple(frame_indices(first, last, n)), meta.fps, n / count * meta.fps, height, width)

    def _list_sizes(self, frames: tuple[ImageRef, ...], options: VideoOptions) -> tuple[tuple[int, int], ...]:
        """(height, width) of a frame list's frames after the image rule, then after the video budget."""
        if not frames:
            raise SampleError("video frame list is empty")
        f = self.factor
        low = options.min_pixels if options.min_pixels is not None else IMAGE_MIN_TOKENS * f * f
        high = options.max_pixels if options.max_pixels is not None else IMAGE_MAX_TOKENS * f * f
        with frame_list_errors():
            sizes = {self.images.size(r) for r in frames}
        as_images = {smart_resize(h, w, f, low, high) for w, h in sizes}
        if len(as_images) > 1:
            raise SampleError(f"video frames differ in size after resizing ({sorted(as_images)[:2]}); a frame list "
                              "needs frames of one size")  # fmt: skip
        height, width = as_images.pop()
        n = ceil_by(len(frames), FRAME_FACTOR)
        return (height, width), frame_size(height, width, n, f, options)

    def _list_plan(self, count: int, size: tuple[int, int], options: VideoOptions) -> VideoPlan:
        """The plan of a list of `count` frames sized `size` (height, width) by `_list_sizes`."""
        n = ceil_by(count, FRAME_FACTOR)
        fps = options.fps if options.fps is not None else FPS
        return VideoPlan(tuple(range(n)), fps, fps, *size)

    def plan(self, video: VideoRef) -> VideoPlan:
        """Sampled frames and their size, from headers only (a container whose header counts no frames has its
        packets counted)."""
        options = self.options(video)
        if isinstance(video.source, tuple):
            return self._list_plan(len(video.source), self._list_sizes(video.source, options)[1], options)
        return self._clip_plan(self.probe(video.source), options)

    def load(self, video: VideoRef) -> tuple[np.ndarray, VideoPlan]:
        """uint8 frames [T, height, width, 3] (T even) and the plan they follow, which `plan` gave too: a clip whose
        packets are not the frames its header promises is a SampleError."""
        options = self.options(video)
        if isinstance(video.source, tuple):
            (h, w), size = self._list_sizes(video.source, options)
            plan = self._list_plan(len(video.source), size, options)
            with frame_list_errors():  # one image at a time, resized before the next is read
                frames = [resize_frame(Image.fromarray(resize_frame(self.images.load(f), h, w)), plan.height,
                                       plan.width) for f in video.source]  # fmt: skip
            frames += [frames[-1]] * (len(plan.indices) - len(frames))
            return np.stack(frames), plan
        with _Container(video.source, self.images) as c:
            promised = c.header_frames()
            if promised:  # refuse a clip too long or too large before reading its packets
                self.check(video.source, c.meta(promised))
            total, times = c.packet_times()
            check_frame_count(video.source, promised, total)
            c.reopen()
            meta = c.meta(total)
            self.check(video.source, meta)
            plan = self._clip_plan(meta, options)
            wanted = sorted(set(plan.indices))
            picked = {}
            for index, frame in c.frames(wanted, times, total):
                picked[index] = resize_frame(frame.to_image(), plan.height, plan.width)
        return np.stack([picked[i] for i in plan.indices]), plan
