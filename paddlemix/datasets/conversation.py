"""The one internal sample format every reader produces and every processor consumes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

IMAGE_PLACEHOLDER = "<image>"
Role = Literal["system", "user", "assistant"]


@dataclass(frozen=True)
class Message:
    """One turn; images appear in `content` as `<image>` placeholders, in the order of `Sample.images`."""

    role: Role
    content: str


@dataclass(frozen=True)
class Sample:
    """A conversation with its images (absolute paths), and where it came from for skip reports."""

    messages: tuple[Message, ...]
    images: tuple[str, ...] = ()
    source: str = ""
    index: int = -1


class SampleError(ValueError):
    """A record that cannot become a training sample; the message is the skip reason."""


class TooLongError(SampleError):
    """A sample longer than `max_length` after image expansion; `length` is its token count."""

    def __init__(self, length: int, max_length: int):
        super().__init__(f"{length} tokens after image expansion exceed max_length {max_length}")
        self.length = length


def with_placeholders(messages: list[Message], n_images: int) -> list[Message]:
    """Put images that have no placeholder at the start of the first user turn; reject count mismatches."""
    found = sum(m.content.count(IMAGE_PLACEHOLDER) for m in messages)
    if found == n_images:
        return messages
    if found == 0:
        for i, message in enumerate(messages):
            if message.role == "user":
                prefix = IMAGE_PLACEHOLDER * n_images
                return [*messages[:i], Message("user", prefix + message.content), *messages[i + 1 :]]
    raise SampleError(f"{found} <image> placeholders but {n_images} images")


def check_turns(messages: list[Message]) -> None:
    """Require at least one user and one non-empty assistant turn, so every sample carries loss."""
    if not any(m.role == "user" for m in messages):
        raise SampleError("no user turn")
    if not any(m.role == "assistant" and m.content.strip() for m in messages):
        raise SampleError("no assistant turn")
