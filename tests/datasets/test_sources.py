from __future__ import annotations

import json
from pathlib import Path

import pytest

from paddlemix.arguments import DatasetSource
from paddlemix.datasets.conversation import Message, SampleError
from paddlemix.datasets.sources import SourceDataset


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


def chatml(path: Path, **kw) -> SourceDataset:
    return SourceDataset(DatasetSource(name="chatml_dataset", data_files=[str(path)], **kw))


def test_three_chatml_shapes_normalise_to_one_conversation(tmp_path: Path) -> None:
    records = [
        {
            "images": ["a.png"],
            "messages": [{"role": "user", "content": "<image>Q"}, {"role": "assistant", "content": "A"}],
        },
        {"image": "a.png", "conversations": [{"from": "human", "value": "<image>Q"}, {"from": "gpt", "value": "A"}]},
        {"image": "a.png", "conversations": [["<image>Q", "A"]]},
        {"conversations": [["<img>a.png</img>Q", "A"]]},
    ]
    data = chatml(write_jsonl(tmp_path / "d.jsonl", records))
    expected = (Message("user", "<image>Q"), Message("assistant", "A"))
    for i in range(len(records)):
        sample = data[i]
        assert sample.messages == expected
        assert sample.images == (str(tmp_path / "a.png"),)


def test_images_without_placeholder_go_to_first_user_turn(tmp_path: Path) -> None:
    record = {
        "images": ["a.png", "b.png"],
        "messages": [
            {"role": "system", "content": "S"},
            {"role": "user", "content": "Q"},
            {"role": "assistant", "content": "A"},
        ],
    }
    sample = chatml(write_jsonl(tmp_path / "d.jsonl", [record]))[0]
    assert sample.messages[1] == Message("user", "<image><image>Q")


def test_image_root_wins_over_file_folder(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [{"image": "x/a.png", "conversations": [["<image>Q", "A"]]}])
    assert chatml(path, image_root=str(tmp_path / "root"))[0].images == (str(tmp_path / "root" / "x" / "a.png"),)


def test_json_array_and_multiple_files(tmp_path: Path) -> None:
    one = tmp_path / "one.json"
    one.write_text(
        json.dumps([{"messages": [{"role": "user", "content": "q0"}, {"role": "assistant", "content": "a0"}]}])
    )
    two = write_jsonl(tmp_path / "two.jsonl", [{"conversations": [["q1", "a1"]]}, {"conversations": [["q2", "a2"]]}])
    data = SourceDataset(DatasetSource(name="chatml_dataset", data_files=[str(one), str(two)]))
    assert len(data) == 3
    assert [data[i].messages[0].content for i in range(3)] == ["q0", "q1", "q2"]
    assert data[2].index == 1 and data[2].source == str(two)


@pytest.mark.parametrize(
    "record, reason",
    [
        ({"image": "a.png", "conversations": [["<image><image>Q", "A"]]}, "placeholders"),
        ({"conversations": [["Q", ""]]}, "no assistant turn"),
        ({"messages": [{"role": "user", "content": "Q"}]}, "no assistant turn"),
        ({"text": "x"}, "neither"),
        ("{not json", "malformed JSON"),
        ([1, 2], "not a JSON object"),
    ],
)
def test_bad_records_raise_with_reason(tmp_path: Path, record, reason: str) -> None:
    data = chatml(write_jsonl(tmp_path / "d.jsonl", [record]))
    with pytest.raises(SampleError, match=reason):
        data[0]


def test_caption_and_vqa_readers(tmp_path: Path) -> None:
    cap = write_jsonl(tmp_path / "c.jsonl", [{"image": "a.png", "caption": ["a red circle", "other"]}])
    vqa = write_jsonl(tmp_path / "v.jsonl", [{"image": "a.png", "question": "What?", "answer": "red"}])
    c = SourceDataset(DatasetSource(name="coco_caption", data_files=[str(cap)], prompt="Caption:"))[0]
    v = SourceDataset(DatasetSource(name="coco_vqa", data_files=[str(vqa)]))[0]
    assert c.messages == (Message("user", "<image>Caption:"), Message("assistant", "a red circle"))
    assert v.messages == (Message("user", "<image>What?"), Message("assistant", "red"))
    with pytest.raises(SampleError, match="missing field"):
        SourceDataset(DatasetSource(name="coco_vqa", data_files=[str(cap)]))[0]
