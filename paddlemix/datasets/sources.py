"""Readers for chatml, caption and VQA files: each record becomes a `Sample` lazily, on access.

Records come in the field's shapes (see the README): PaddleMIX pairs, LLaVA/ShareGPT turns, ERNIEKit's
`text_info`/`image_info` records (PaddleOCR-VL's fine-tuning format) and OpenAI-style messages whose content is a string or a list of typed parts; per-turn `"loss"` flags (ms-swift); images as paths,
`{"bytes", "path"}` dicts, base64 data URIs or http(s) URLs, at record level or inside the turns. Images are only
resolved here and read later by the processor, so a large source costs little memory.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import logging
import re
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from paddlemix.arguments import DatasetSource
from paddlemix.datasets.conversation import (
    IMAGE_PLACEHOLDER,
    TEXT_GUARD,
    VIDEO_PLACEHOLDER,
    ImageBytes,
    ImageRef,
    Message,
    RelativeImagePath,
    Sample,
    SampleError,
    VideoRef,
    check_turns,
    guard_text,
)
from paddlemix.datasets.records import RecordFile
from paddlemix.processors.video_sampling import VideoOptions

ROLE_ALIASES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "model": "assistant",
                "system": "system"}  # fmt: skip
IMAGE_PART_TYPES = ("image", "image_url", "input_image")
VIDEO_PART_TYPES = ("video", "video_url")
# Base64 text of PNG, JPEG, GIF and WebP files starts with these (their magic numbers), as in ms-swift exports.
BASE64_IMAGE_STARTS = ("iVBORw0KGgo", "/9j/", "R0lGOD", "UklGR")
DEFAULT_CAPTION_PROMPT = "Describe the image briefly."
DATA_FILE_FOLDER = "the data file's folder"

__all__ = ["RecordFile", "SourceDataset", "image_ref"]
logger = logging.getLogger(__name__)


def _b64(text: str, origin: str) -> ImageBytes:
    try:
        return ImageBytes(base64.b64decode("".join(text.split()), validate=True), origin)
    except (binascii.Error, ValueError):
        raise SampleError(f"{origin} is not valid base64") from None


def image_ref(value: Any, root: Path, root_from: str = DATA_FILE_FOLDER) -> ImageRef:
    """One image reference of a record as a path (relative ones resolved against `root`: `root_from` says which
    folder that is, for the message when the image is missing), URL or inline bytes.

    Accepts a path, `file://` path, http(s) URL, `data:image/...;base64,` URI, bare base64 of a PNG/JPEG/GIF/WebP
    file, raw bytes, or a dict with `bytes` (raw or base64) and/or `path`, `url`, `image_url`, `image`.
    """
    if isinstance(value, (bytes, bytearray)):
        return ImageBytes(bytes(value), "record bytes")
    if isinstance(value, dict):
        data = value.get("bytes")
        if data is not None:
            origin = f"bytes of {value['path']}" if value.get("path") else "record bytes"
            return ImageBytes(bytes(data), origin) if isinstance(data, (bytes, bytearray)) else _b64(data, origin)
        for key in ("path", "url", "image_url", "image"):
            if value.get(key) is not None:
                return image_ref(value[key], root, root_from)
        raise SampleError(f"image entry has neither bytes nor a path (keys: {', '.join(sorted(value))})")
    if not isinstance(value, str) or not value.strip():
        raise SampleError(f"bad image reference {value!r:.60}")
    if value.startswith("data:"):
        header, _, payload = value.partition(",")
        if not header.endswith(";base64"):
            raise SampleError(f"data URI is not base64-encoded: {header[:60]}")
        return _b64(payload, "data URI")
    if value.startswith(("http://", "https://")):
        return value
    if value.startswith(BASE64_IMAGE_STARTS) and len(value) > 64:
        return _b64(value, "base64 image")
    path = Path(value.removeprefix("file://"))
    return str(path) if path.is_absolute() else RelativeImagePath(str(path), str(root), root_from)


def video_ref(value: Any, root: Path, options: VideoOptions | None = None) -> VideoRef:
    """One video of a record: a file reference (anything `image_ref` takes: path, URL, data URI, bytes) or a list
    of frame image references, with the sampling options of its typed part."""
    if isinstance(value, dict) and not {"bytes", "path"} & set(value):
        value = value.get("url") if value.get("url") is not None else value.get("video")
    if isinstance(value, (list, tuple)):
        return VideoRef(tuple(image_ref(v, root) for v in value), options)
    return VideoRef(image_ref(value, root), options)


def record_images(record: dict[str, Any], key: str = "image") -> list[Any]:
    """The record-level images under `images` or `image` (one value or a list), unresolved."""
    for name in (key + "s", key):
        value = record.get(name)
        if value is not None:
            return list(value) if isinstance(value, (list, tuple)) else [value]
    return []


def _loss_flag(turn: dict[str, Any]) -> bool:
    value = turn.get("loss")
    if value is None:
        return True
    if isinstance(value, (bool, int, float)):
        return bool(value)
    raise SampleError(f'"loss" must be true or false, got {value!r:.40}')


def _raw_turns(record: dict[str, Any]) -> list[tuple[Any, Any, bool]]:
    """(role, content, loss) of every turn, whichever of the three chatml shapes the record has."""
    if record.get("messages") is not None:
        turns = record["messages"]
        return [(t.get("role"), t.get("content"), _loss_flag(t)) if isinstance(t, dict) else (None, t, True)
                for t in turns]  # fmt: skip
    conv = record.get("conversations")
    if conv is None:
        raise SampleError('record has neither "messages" nor "conversations" (nor ERNIEKit\'s "text_info")')
    if conv and isinstance(conv[0], (list, tuple)):
        return [(role, text, True) for pair in conv for role, text in zip(("user", "assistant"), pair)]
    out = []
    for t in conv:
        if not isinstance(t, dict):
            raise SampleError("bad turn (expected an object with from/value)")
        role = t["from"] if t.get("from") is not None else t.get("role")
        out.append((role, t["value"] if t.get("value") is not None else t.get("content"), _loss_flag(t)))
    return out


class _Images:
    """Collects a record's images in placeholder order and writes `<image>` where each one goes.

    Where images come from (README "Text is text"): typed content takes images only from its image parts, and its
    text parts are plain text; string content of a record with record-level images takes the source's
    `placeholder` as an image mark; `<img>path</img>` is an image only when `inline` (PaddleMIX's pair-list records,
    or the source's `inline_images`). Everything else that looks like a mark is guarded as text (`guard_text`).
    A mark's file is never looked up here: a missing image is reported missing when it is read.
    """

    def __init__(
        self, record_level: list[Any], root: Path, placeholder: str = IMAGE_PLACEHOLDER, inline: bool = False
    ):
        self.pending, self.root = list(record_level), root
        self.placeholder, self.inline_marks = placeholder, inline
        self.has_images = bool(record_level)
        self.ordered: list[Any] = []
        self.placeholders = 0
        self.inline = 0
        self.videos = _Videos([])

    def with_videos(self, record_level: list[Any]) -> _Images:
        """Also collect `<video>` marks and typed video parts, for the videos of the record (`videos`/`video`)."""
        self.videos = _Videos(record_level)
        return self

    def take(self, inline: Any = None) -> str:
        self.placeholders += 1
        if inline is not None:
            self.inline += 1
            self.ordered.append(inline)
        elif self.pending:
            self.ordered.append(self.pending.pop(0))
        return IMAGE_PLACEHOLDER

    def plain(self, text: str) -> str:
        """Text whose marks are all text (a typed text part; string content without images)."""
        return guard_text(text, (self.placeholder, IMAGE_PLACEHOLDER, VIDEO_PLACEHOLDER))

    def text(self, text: str) -> str:
        """String content: marks become images where the record and the source say images are (see the class)."""
        marks = [r"<img>(?P<path>.*?)</img>"] if self.inline_marks else []
        if self.has_images:
            marks.append(re.escape(self.placeholder))
        if self.videos.has_videos:  # every mark counts, so one past the record's videos is an error, not text
            marks.append(re.escape(VIDEO_PLACEHOLDER))
        if not marks:
            return self.plain(text)
        out, pos = [], 0
        for m in re.finditer("|".join(marks), text):
            taken = self.videos.take() if m.group(0) == VIDEO_PLACEHOLDER else self.take(m.groupdict().get("path"))
            out += [self.plain(text[pos : m.start()]), taken]
            pos = m.end()
        return "".join(out) + self.plain(text[pos:])

    def part(self, part: Any) -> str:
        if isinstance(part, str):
            return self.plain(part)
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            return self.plain(part.get("text") or "")
        if kind in IMAGE_PART_TYPES:
            inline = next((part[k] for k in ("image", "image_url", "url", "path") if part.get(k) is not None), None)
            return self.take(inline)
        if kind in VIDEO_PART_TYPES:
            return self.videos.take(part)
        raise SampleError(f"unsupported content part {kind or part!r:.40} (only text, image and video parts)")

    def content(self, content: Any) -> str:
        if isinstance(content, str):
            return self.text(content)
        if isinstance(content, (list, tuple)):
            return "".join(self.part(p) for p in content)
        raise SampleError(f"bad turn content {content!r:.40}")

    def resolve(self, messages: list[Message]) -> tuple[list[Message], tuple[ImageRef, ...]]:
        """Check counts; images of a record without any placeholder go in front of its first user turn."""
        if self.placeholders == 0 and self.pending:
            self.ordered, self.pending = self.pending, []
            k = next((i for i, m in enumerate(messages) if m.role == "user"), None)
            if k is not None:
                m = messages[k]
                messages[k] = Message("user", IMAGE_PLACEHOLDER * len(self.ordered) + m.content, m.loss)
        if self.pending or len(self.ordered) < self.placeholders:
            total = len(self.ordered) + len(self.pending)
            raise SampleError(f"{self.placeholders} {self.placeholder} placeholders but {total} images")
        return messages, tuple(image_ref(v, self.root) for v in self.ordered)


class _Videos:
    """Collects a record's videos in `<video>` order: record-level ones (LLaMA-Factory / ms-swift `videos`) taken
    by `<video>` marks of string content, typed parts `{"type": "video", "video": path | [frames], "fps", ...}`
    carrying their own sampling options."""

    def __init__(self, record_level: list[Any]):
        self.pending = list(record_level)
        self.has_videos = bool(record_level)
        self.ordered: list[tuple[Any, VideoOptions | None]] = []
        self.placeholders = 0

    def take(self, part: dict[str, Any] | None = None) -> str:
        self.placeholders += 1
        if part is not None:
            value = next((part[k] for k in ("video", "video_url", "url", "path") if part.get(k) is not None), None)
            if value is None:
                raise SampleError('video part has no video (expected a path, URL or frame list under "video")')
            self.ordered.append((value, VideoOptions.from_record(part)))
        elif self.pending:
            self.ordered.append((self.pending.pop(0), None))
        return VIDEO_PLACEHOLDER

    def resolve(self, messages: list[Message], root: Path) -> tuple[VideoRef, ...]:
        """Check counts; videos of a record without any `<video>` go in front of its first user turn."""
        if self.placeholders == 0 and self.pending:
            self.ordered, self.pending = [(v, None) for v in self.pending], []
            k = next((i for i, m in enumerate(messages) if m.role == "user"), None)
            if k is not None:
                m = messages[k]
                messages[k] = Message("user", VIDEO_PLACEHOLDER * len(self.ordered) + m.content, m.loss)
        if self.pending or len(self.ordered) < self.placeholders:
            total = len(self.ordered) + len(self.pending)
            raise SampleError(f"{self.placeholders} {VIDEO_PLACEHOLDER} placeholders but {total} videos")
        return tuple(video_ref(v, root, options) for v, options in self.ordered)


def is_pair_list(record: dict[str, Any]) -> bool:
    """PaddleMIX's own shape: "conversations" as [user, assistant] pairs of strings."""
    conv = record.get("conversations")
    return record.get("messages") is None and bool(conv) and isinstance(conv[0], (list, tuple))


def is_erniekit(record: dict[str, Any]) -> bool:
    """ERNIEKit's (PaddleOCR-VL's fine-tuning) shape: "text_info" turns, images in "image_info"."""
    return record.get("messages") is None and record.get("conversations") is None and "text_info" in record


ERNIEKIT_ROLES = {"mask": "user", "no_mask": "assistant"}  # mask: prompt (no loss); no_mask: the trained answer


def erniekit_sample(record: dict[str, Any], root: Path) -> tuple[list[Message], tuple[ImageRef, ...]]:
    """Messages and images of an ERNIEKit record:

        {"image_info": [{"image_url": "a.png", "matched_text_index": 0}],
         "text_info": [{"text": "OCR:", "tag": "mask"}, {"text": "Hello", "tag": "no_mask"}]}

    `text_info` alternates prompts (`mask`) and answers (`no_mask`), starting with a prompt and ending with an
    answer; each image goes in front of the text at its `matched_text_index` (default 0), which must be a prompt.
    A prompt's text is plain text (an `<image>` in it stays text).

    Raises:
        SampleError: bad shape, broken alternation, or an image matched to an answer or to no text.
    """
    texts, infos = record.get("text_info"), record.get("image_info") or []
    if not isinstance(texts, list) or not texts or not isinstance(infos, list):
        raise SampleError('ERNIEKit record: "text_info" must be a non-empty list and "image_info" a list')
    at: dict[int, list[Any]] = {}
    for k, info in enumerate(infos):
        url = info.get("image_url") if isinstance(info, dict) else None
        index = info.get("matched_text_index", 0) if isinstance(info, dict) else None
        if url is None or not isinstance(index, int) or not 0 <= index < len(texts):
            raise SampleError(f"ERNIEKit image_info[{k}] needs an image_url and a matched_text_index within text_info")
        at.setdefault(index, []).append(url)
    images = _Images([], root)
    messages, expected = [], "mask"
    for k, item in enumerate(texts):
        tag = item.get("tag") if isinstance(item, dict) else None
        if tag != expected:
            raise SampleError(
                f'ERNIEKit text_info[{k}] has tag {tag!r} where "{expected}" belongs: turns alternate prompt ("mask") '
                'and answer ("no_mask"), starting with a prompt'
            )
        if tag == "no_mask" and k in at:
            raise SampleError(f"ERNIEKit image matched to text_info[{k}], an answer (images can only be inputs)")
        text = item.get("text")
        if not isinstance(text, str):
            raise SampleError(f'ERNIEKit text_info[{k}] has no "text" string')
        marks = "".join(images.take(url) for url in at.get(k, ()))
        messages.append(Message(ERNIEKIT_ROLES[tag], marks + images.plain(text)))
        expected = "no_mask" if tag == "mask" else "mask"
    if expected == "no_mask":
        raise SampleError('ERNIEKit record ends with a prompt ("mask") that has no answer ("no_mask")')
    return images.resolve(messages)


def chatml_sample(
    record: dict[str, Any], root: Path, placeholder: str = IMAGE_PLACEHOLDER, inline_images: bool | None = None
) -> tuple[list[Message], tuple[ImageRef, ...]]:
    """Messages with `<image>` / `<video>` placeholders and the images in their order, from any chatml record
    shape (ERNIEKit's `text_info` records included, see `erniekit_sample`); the videos (see `chatml_videos`) are
    kept on the returned list as `videos`.

    `inline_images` None: `<img>path</img>` is an image in PaddleMIX's pair-list records only."""
    if is_erniekit(record):
        return erniekit_sample(record, root)
    inline = is_pair_list(record) if inline_images is None else inline_images
    images = _Images(record_images(record), root, placeholder, inline).with_videos(record_images(record, "video"))
    messages = []
    for role, content, loss in _raw_turns(record):
        if role not in ROLE_ALIASES:
            raise SampleError(f"bad turn (role {role!r})")
        before = images.placeholders
        text = images.content(content)
        if ROLE_ALIASES[role] == "assistant" and images.placeholders > before:
            raise SampleError("<image> in an assistant turn (images can only be inputs, never trained targets)")
        messages.append(Message(ROLE_ALIASES[role], text, loss))
    videos = images.videos.resolve(messages, root)
    messages, refs = images.resolve(messages)
    return WithVideos(messages, videos), refs


class WithVideos(list):
    """The messages of a record (a list, as every reader returns) that also carries the record's videos."""

    def __init__(self, messages: list[Message], videos: tuple[VideoRef, ...] = ()):
        super().__init__(messages)
        self.videos = videos


def most_frequent(values: Any) -> str:
    """The most frequent answer (ties: the first), as VQA annotations with several annotators are scored; a
    single string is returned as is; dict answers use their "answer" field (VQAv2)."""
    if isinstance(values, str):
        return values
    answers = [v.get("answer") if isinstance(v, dict) else v for v in values]
    answers = [a for a in answers if isinstance(a, str)]
    if not answers:
        raise SampleError("no answer")
    return Counter(answers).most_common(1)[0][0]


def _single_image(record: dict[str, Any], root: Path, prompt: str, answer: str):
    images = _Images(record_images(record), root)
    messages = [Message("user", images.text(prompt)), Message("assistant", images.plain(answer))]
    return images.resolve(messages)


def caption_sample(
    record: dict[str, Any], root: Path, source: DatasetSource
) -> tuple[list[Message], tuple[ImageRef, ...]]:
    caption = record["caption"]
    caption = caption[0] if isinstance(caption, (list, tuple)) and caption else caption
    return _single_image(record, root, source.prompt or DEFAULT_CAPTION_PROMPT, caption)


def vqa_sample(
    record: dict[str, Any], root: Path, source: DatasetSource
) -> tuple[list[Message], tuple[ImageRef, ...]]:
    answer = record["answer"] if record.get("answer") is not None else record["answers"]
    return _single_image(record, root, record["question"], most_frequent(answer))


# (file, "images" | "videos") whose "marks stay text" note was logged already (check_data builds several readers
# per source).
MARKS_SAID_TEXT: set[tuple[str, str]] = set()


def note_marks_as_text(messages: list[Message], path: Path, index: int, kinds: dict[str, tuple[bool, tuple]]) -> None:
    """Log once per file and kind that a record without images (videos) keeps its image (video) marks as text:
    `kinds` maps "images"/"videos" to (whether the record has any, its marks), and the note names the marks the
    record has and how many."""
    for kind, (present, marks) in kinds.items():
        counts = {
            m: sum(msg.content.count(m[:1] + TEXT_GUARD + m[1:]) for msg in messages) for m in dict.fromkeys(marks)
        }
        found = " and ".join(f'"{m}" ({n} in the record)' for m, n in counts.items() if n)
        if present or not found or (str(path), kind) in MARKS_SAID_TEXT:
            continue
        MARKS_SAID_TEXT.add((str(path), kind))  # once per file in this process, however many readers check it
        also = " (<img> tags too)" if kind == "images" else ""
        logger.info("%s #%d has no %s: its %s stays text, as in every such record of this source%s", path, index,
                    kind, found, also)  # fmt: skip


Reader = Callable[[dict[str, Any], Path, DatasetSource], tuple[list[Message], tuple[ImageRef, ...]]]
READERS: dict[str, Reader] = {
    "chatml_dataset": lambda record, root, source: chatml_sample(
        record, root, source.image_placeholder, source.inline_images
    ),
    "coco_caption": caption_sample,
    "coco_vqa": vqa_sample,
}


class SourceDataset:
    """All records of one `DatasetSource`, returned as `Sample`s; bad records raise `SampleError`."""

    def __init__(self, source: DatasetSource):
        self.source = source
        self.files = [RecordFile(path) for path in source.data_files]
        self._starts = []
        total = 0
        for f in self.files:
            self._starts.append(total)
            total += len(f)
        self._len = total
        self._read = READERS[source.name]

    def __len__(self) -> int:
        return self._len

    def locate(self, i: int) -> tuple[RecordFile, int]:
        """The file holding record `i` and the record's index inside it."""
        k = bisect.bisect_right(self._starts, i) - 1
        return self.files[k], i - self._starts[k]

    def read_record(self, i: int, read: Callable[[dict, Path], Any]) -> tuple[Any, RecordFile, int]:
        """`read(record, image root)` on record `i`, with its file and index there.

        Raises:
            SampleError: the record is not a JSON object or lacks a field `read` needs.
        """
        file, local = self.locate(i)
        record = file[local]
        if not isinstance(record, dict):
            raise SampleError("record is not a JSON object")
        root = Path(self.source.image_root) if self.source.image_root else file.path.parent
        try:
            return read(record, root), file, local
        except KeyError as err:
            raise SampleError(f"missing field {err}") from None

    def __getitem__(self, i: int) -> Sample:
        (messages, images), file, local = self.read_record(
            i, lambda record, root: self._read(record, root, self.source)
        )
        if self.source.image_root:
            images = tuple(RelativeImagePath(i.written, i.root, '"image_root"') if isinstance(i, RelativeImagePath)
                           else i for i in images)  # fmt: skip
        check_turns(messages)
        videos = getattr(messages, "videos", ())
        marks = {"images": (bool(images), (self.source.image_placeholder, IMAGE_PLACEHOLDER)),
                 "videos": (bool(videos), (VIDEO_PLACEHOLDER,))}  # fmt: skip
        note_marks_as_text(messages, file.path, local, marks)
        return Sample(tuple(messages), images, source=str(file.path), index=local, videos=videos)
