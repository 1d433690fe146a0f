"""The one internal sample format every reader produces and every processor consumes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

IMAGE_PLACEHOLDER = "<image>"
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


# An image of a sample: an absolute path, an http(s) URL, or inline bytes.
ImageRef = str | ImageBytes


@dataclass(frozen=True)
class Sample:
    """A conversation with its images, and where it came from for skip reports."""

    messages: tuple[Message, ...]
    images: tuple[ImageRef, ...] = ()
    source: str = ""
    index: int = -1


class SampleError(ValueError):
    """A record that cannot become a training sample; the message is the skip reason."""


class TooLongError(SampleError):
    """A sample longer than `max_length` after image expansion; `length` is its token count."""

    def __init__(self, length: int, max_length: int):
        super().__init__(f"{length} tokens after image expansion exceed max_length {max_length}")
        self.length = length


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
