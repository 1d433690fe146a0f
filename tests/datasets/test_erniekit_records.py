"""ERNIEKit records (`image_info` + `text_info`, PaddleOCR-VL's fine-tuning format) read by `chatml_dataset`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from paddlemix.arguments import DatasetSource
from paddlemix.datasets.conversation import Message, SampleError
from paddlemix.datasets.sources import SourceDataset


def ernie(texts: list[tuple[str, str]], images: list[tuple[str, int]] = (("a.png", 0),)) -> dict:
    return {"image_info": [{"image_url": u, "matched_text_index": i} for u, i in images],
            "text_info": [{"text": t, "tag": tag} for t, tag in texts]}  # fmt: skip


def read(tmp_path: Path, records: list[dict]) -> SourceDataset:
    path = tmp_path / "ocr.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    return SourceDataset(DatasetSource(name="chatml_dataset", data_files=[str(path)]))


def test_prompt_and_answer_with_an_image(tmp_path: Path) -> None:
    sample = read(tmp_path, [ernie([("OCR:", "mask"), ("第一行 line 1", "no_mask")])])[0]
    assert sample.messages == (Message("user", "<image>OCR:"), Message("assistant", "第一行 line 1"))
    assert sample.images == (str(tmp_path / "a.png"),)


def test_two_turns_images_where_matched_and_default_index(tmp_path: Path) -> None:
    record = ernie([("OCR:", "mask"), ("a", "no_mask"), ("Table Recognition:", "mask"), ("b", "no_mask")],
                   [("a.png", 0), ("b.png", 2)])  # fmt: skip
    record["image_info"].append({"image_url": "c.png"})  # no index: the first text
    sample = read(tmp_path, [record])[0]
    assert [m.content for m in sample.messages] == ["<image><image>OCR:", "a", "<image>Table Recognition:", "b"]
    assert [Path(str(i)).name for i in sample.images] == ["a.png", "c.png", "b.png"]


def test_text_only_record_and_image_marks_in_text_stay_text(tmp_path: Path) -> None:
    sample = read(tmp_path, [ernie([("What is <image>?", "mask"), ("text", "no_mask")], [])])[0]
    assert sample.images == () and len(sample.messages) == 2
    assert sample.messages[0].content.startswith("What is") and sample.messages[0].content != "What is <image>?"


@pytest.mark.parametrize(
    "record, reason",
    [
        (ernie([("a", "no_mask"), ("OCR:", "mask")]), "tag 'no_mask' where \"mask\" belongs"),
        (ernie([("OCR:", "mask"), ("OCR:", "mask")]), "tag 'mask' where \"no_mask\" belongs"),
        (ernie([("OCR:", "mask"), ("a", "no_mask"), ("OCR:", "mask")]), "ends with a prompt"),
        (ernie([("OCR:", "mask"), ("a", "answer")]), "tag 'answer'"),
        (ernie([("OCR:", "mask"), ("a", "no_mask")], [("a.png", 1)]), "an answer"),
        (ernie([("OCR:", "mask"), ("a", "no_mask")], [("a.png", 5)]), "matched_text_index within"),
        ({"image_info": [{"matched_text_index": 0}], "text_info": [{"text": "x", "tag": "mask"}]}, "image_url"),
        ({"text_info": []}, "non-empty list"),
        (ernie([("OCR:", "mask"), (None, "no_mask")]), 'no "text" string'),
    ],
)
def test_bad_records_are_skipped_with_a_reason(tmp_path: Path, record: dict, reason: str) -> None:
    with pytest.raises(SampleError, match=reason.replace("(", r"\(").replace("?", r"\?")):
        read(tmp_path, [record])[0]
