"""The one internal sample format every reader produces and every processor consumes."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

IMAGE_PLACEHOLDER = "<image>"
VIDEO_PLACEHOLDER = "<video>"
# Written after the first character of a marker string that a record's text quotes (`<image>` in a text part, a
# typed `<|im_end|>`), so no reader, template or tokenizer takes it for an image or a control token; the encoder
# drops it and tokenizes the marker as plain text (see paddlemix/processors/text_encoding.py).
TEXT_GUARD = "\ue003"
Role = Literal["system", "user", "assistant"]


@dataclass(frozen=True)
class Message:
    """One turn; images appear in `content` as `<image>` placeholders, in the order of `Sample.images`.

    `loss` says whether an assistant turn is trained (ms-swift's per-turn `"loss": false` turns it off); other
    roles never carry loss.
    """

    role: Role
    content: str
    loss: bool = True


@dataclass(frozen=True)
class ImageBytes:
    """An encoded image carried inside the record (Parquet bytes, base64 text, a data URI); `origin` names it in
    skip reasons instead of the bytes."""

    data: bytes = field(repr=False)
    origin: str = "inline image"

    def __str__(self) -> str:
        return f"{self.origin} ({len(self.data)} bytes)"


class RelativeImagePath(str):
    """The path of an image a record gives relative to a folder, joined to that folder (`root`): a str like any
    other path, which also remembers what the record wrote and why that folder, so a missing image can say where
    it was looked for and how to point elsewhere (`not_found_hint`)."""

    written: str
    root: str
    root_from: str  # '"image_root"', or "the data file's folder"

    def __new__(cls, written: str, root: str, root_from: str) -> RelativeImagePath:
        self = super().__new__(cls, str(Path(root) / written))
        self.written, self.root, self.root_from = written, root, root_from
        return self

    def __getnewargs__(self) -> tuple[str, str, str]:  # data-loader workers receive samples pickled
        return self.written, self.root, self.root_from

    def not_found_hint(self) -> str:
        """Where the relative path was looked for and the fix: `image_root`, naming the working directory when
        the image is there (a common LLaVA habit: paths relative to where the training is started)."""
        where = f'relative path "{self.written}" looked up in {self.root}, {self.root_from}'
        cwd = Path.cwd()
        if Path(self.root).resolve() != cwd and (cwd / self.written).exists():
            return f'{where}; it exists under the working directory: set "image_root": "{cwd}" on this source'
        if self.root_from == '"image_root"':
            return f'{where}; check this source\'s "image_root"'
        return (
            f'{where}; relative paths never resolve against the working directory: set "image_root" on this '
            "source to the folder they are relative to"
        )


# An image of a sample: an absolute path (a RelativeImagePath when the record's was relative), an http(s) URL, or
# inline bytes.
ImageRef = str | ImageBytes


@dataclass(frozen=True)
class VideoRef:
    """One video of a sample: a file (`ImageRef`: path, URL or bytes) or a tuple of frame images, and how to
    sample it (`paddlemix.processors.video_sampling.VideoOptions`, None = the run's defaults)."""

    source: ImageRef | tuple[ImageRef, ...]
    options: Any = None

    def __str__(self) -> str:
        if isinstance(self.source, tuple):
            return f"frame list of {len(self.source)} ({self.source[0] if self.source else ''} ...)"
        return str(self.source)


@dataclass(frozen=True)
class Sample:
    """A conversation with its images and videos (`<image>` / `<video>` placeholders in order), and where it came
    from for skip reports."""

    messages: tuple[Message, ...]
    images: tuple[ImageRef, ...] = ()
    source: str = ""
    index: int = -1
    videos: tuple[VideoRef, ...] = ()


class SampleError(ValueError):
    """A record that cannot become a training sample; the message is the skip reason."""


class TooLongError(SampleError):
    """A sample longer than `max_length` after its images' (videos') tokens are expanded; `length` is its token
    count, `expanded` names what was expanded ("image", "video", "image and video")."""

    def __init__(self, length: int, max_length: int, expanded: str = "image"):
        super().__init__(f"{length} tokens after {expanded} expansion exceed max_length {max_length}")
        self.length = length


def guard_text(text: str, markers: Sequence[str]) -> str:
    """`text` with every occurrence of each marker string guarded (TEXT_GUARD after its first character), longest
    markers first, so the marker is read as text: `guard_text("a <image>", ["<image>"])` -> "a <\\ue003image>"."""
    for marker in sorted(markers, key=len, reverse=True):
        if marker and marker in text:
            text = text.replace(marker, marker[0] + TEXT_GUARD + marker[1:])
    return text


def plain_text(text: str) -> str:
    """The text as the record wrote it (guards removed), for references, logs and reports."""
    return text.replace(TEXT_GUARD, "")


def check_turns(messages: list[Message]) -> None:
    """Require a conversation that starts with the user, has no image in an answer, and trains at least one
    non-empty assistant turn, so every sample carries loss and no image token ever becomes a target."""
    if not any(m.role == "user" for m in messages):
        raise SampleError("no user turn")
    first = next(m for m in messages if m.role != "system")
    if first.role == "assistant":
        raise SampleError("conversation starts with an assistant turn (no user turn before the first answer)")
    if any(m.role == "assistant" and IMAGE_PLACEHOLDER in m.content for m in messages):
        raise SampleError("<image> in an assistant turn (images can only be inputs, never trained targets)")
    if any(m.role == "assistant" and VIDEO_PLACEHOLDER in m.content for m in messages):
        raise SampleError("<video> in an assistant turn (videos can only be inputs, never trained targets)")
    if not any(m.role == "assistant" for m in messages):
        raise SampleError("no assistant turn")
    answers = [m for m in messages if m.role == "assistant" and m.content.strip()]
    if not answers:  # an empty answer would teach the model to end at once; empty turns of other records stay context
        raise SampleError("no assistant turn with an answer (every answer is empty)")
    if not any(m.loss for m in answers):
        raise SampleError('no assistant turn to train (every answer has "loss": false)')


def as_skip(err: Exception) -> SampleError:
    """The skip for any exception raised while reading, decoding or encoding one record: a `SampleError` as is,
    anything else (a library failing on a strange file, a bug) with its type, so one record never stops a run."""
    if isinstance(err, SampleError):
        return err
    return SampleError(f"unexpected {type(err).__name__} while reading the record: {err}")
