"""Readers for chatml, caption and VQA files: each record becomes a `Sample` lazily, on access.

Files are indexed once (JSONL by byte offset, JSON arrays by parsing); images are only path-resolved here and
decoded later by the processor, so a large source costs little memory.
"""

from __future__ import annotations

import bisect
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from paddlemix.arguments import DatasetSource
from paddlemix.datasets.conversation import (
    IMAGE_PLACEHOLDER,
    Message,
    Sample,
    SampleError,
    check_turns,
    with_placeholders,
)

INLINE_IMAGE = re.compile(r"<img>(.*?)</img>")
ROLE_ALIASES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}
DEFAULT_CAPTION_PROMPT = "Describe the image briefly."


class RecordFile:
    """Random access to the records of one JSON array or JSONL file."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        with open(self.path, "rb") as f:
            head = f.read(64).lstrip()
        if head.startswith(b"["):
            self._records: list[Any] | None = json.loads(self.path.read_text(encoding="utf-8"))
            self._offsets: list[int] = []
        else:
            self._records = None
            self._offsets = self._index_lines()

    def _index_lines(self) -> list[int]:
        offsets, pos = [], 0
        with open(self.path, "rb") as f:
            for line in f:
                if line.strip():
                    offsets.append(pos)
                pos += len(line)
        return offsets

    def __len__(self) -> int:
        return len(self._records) if self._records is not None else len(self._offsets)

    def __getitem__(self, i: int) -> Any:
        if self._records is not None:
            return self._records[i]
        with open(self.path, "rb") as f:
            f.seek(self._offsets[i])
            line = f.readline()
        try:
            return json.loads(line)
        except json.JSONDecodeError as err:
            raise SampleError(f"malformed JSON line: {err}") from None


def _images(record: dict[str, Any], key: str = "image") -> list[str]:
    value = record.get(key, record.get(key + "s"))
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


def _resolve(paths: list[str], root: Path) -> tuple[str, ...]:
    return tuple(str(p if Path(p).is_absolute() else root / p) for p in paths)


def _inline_images(text: str, found: list[str]) -> str:
    """Turn PaddleMIX's inline `<img>path</img>` into placeholders, collecting the paths."""
    found.extend(INLINE_IMAGE.findall(text))
    return INLINE_IMAGE.sub(IMAGE_PLACEHOLDER, text)


def _chatml_messages(record: dict[str, Any]) -> tuple[list[Message], list[str]]:
    images = _images(record)
    if "messages" in record:
        turns = [(m["role"], m["content"]) for m in record["messages"]]
    elif "conversations" in record:
        conv = record["conversations"]
        if conv and isinstance(conv[0], (list, tuple)):
            turns = [(role, text) for pair in conv for role, text in zip(("user", "assistant"), pair)]
        else:
            turns = [(turn["from"], turn["value"]) for turn in conv]
    else:
        raise SampleError('record has neither "messages" nor "conversations"')
    messages = []
    for role, text in turns:
        if role not in ROLE_ALIASES or not isinstance(text, str):
            raise SampleError(f"bad turn (role {role!r})")
        messages.append(Message(ROLE_ALIASES[role], _inline_images(text, images)))
    return messages, images


def _caption_messages(record: dict[str, Any], prompt: str) -> tuple[list[Message], list[str]]:
    caption = record["caption"]
    caption = caption[0] if isinstance(caption, list) else caption
    return [Message("user", IMAGE_PLACEHOLDER + prompt), Message("assistant", caption)], _images(record)


def _vqa_messages(record: dict[str, Any], prompt: str) -> tuple[list[Message], list[str]]:
    answer = record["answer"]
    answer = answer[0] if isinstance(answer, list) else answer
    return [Message("user", IMAGE_PLACEHOLDER + record["question"]), Message("assistant", answer)], _images(record)


READERS: dict[str, Callable[[dict[str, Any], str], tuple[list[Message], list[str]]]] = {
    "chatml_dataset": lambda record, prompt: _chatml_messages(record),
    "coco_caption": _caption_messages,
    "coco_vqa": _vqa_messages,
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
        self.prompt = source.prompt or DEFAULT_CAPTION_PROMPT

    def __len__(self) -> int:
        return self._len

    def locate(self, i: int) -> tuple[RecordFile, int]:
        """The file holding record `i` and the record's index inside it."""
        k = bisect.bisect_right(self._starts, i) - 1
        return self.files[k], i - self._starts[k]

    def __getitem__(self, i: int) -> Sample:
        file, local = self.locate(i)
        record = file[local]
        if not isinstance(record, dict):
            raise SampleError("record is not a JSON object")
        try:
            messages, images = self._read(record, self.prompt)
        except KeyError as err:
            raise SampleError(f"missing field {err}") from None
        messages = with_placeholders(messages, len(images))
        check_turns(messages)
        root = Path(self.source.image_root) if self.source.image_root else file.path.parent
        return Sample(tuple(messages), _resolve(images, root), source=str(file.path), index=local)
