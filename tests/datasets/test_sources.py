from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from paddlemix.arguments import DatasetSource
from paddlemix.datasets.conversation import TEXT_GUARD, ImageBytes, Message, SampleError
from paddlemix.datasets.sources import SourceDataset, image_ref
from paddlemix.testing.wild_images import png_bytes


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


PNG = png_bytes()
B64 = base64.b64encode(PNG).decode()


def test_typed_content_lists_with_inline_and_record_level_images(tmp_path: Path) -> None:
    """Images come from image parts only (inline, else the record's list in order); a text part is text, even where
    it quotes `<image>`."""
    record = {
        "images": ["r1.png"],
        "messages": [
            {"role": "system", "content": [{"type": "text", "text": "S"}]},
            {"role": "user", "content": [
                {"type": "image"},
                {"type": "text", "text": "Q1 "},
                {"type": "image", "image": "inline.jpg"},
                {"type": "image_url", "image_url": {"url": "https://example.com/x.png"}},
                {"type": "text", "text": "and <image>?"},
            ]},
            {"role": "assistant", "content": [{"type": "text", "text": "A"}]},
        ],
    }  # fmt: skip
    sample = chatml(write_jsonl(tmp_path / "d.jsonl", [record]))[0]
    assert sample.messages == (
        Message("system", "S"),
        Message("user", "<image>Q1 <image><image>and <" + TEXT_GUARD + "image>?"),
        Message("assistant", "A"),
    )
    assert sample.images == (str(tmp_path / "r1.png"), str(tmp_path / "inline.jpg"), "https://example.com/x.png")


@pytest.mark.parametrize(
    "value, expected",
    [
        ({"bytes": B64, "path": "x.png"}, ImageBytes(PNG, "bytes of x.png")),
        ({"bytes": None, "path": "x.png"}, "PATH"),
        ({"path": "/abs/x.png"}, "/abs/x.png"),
        (f"data:image/png;base64,{B64}", ImageBytes(PNG, "data URI")),
        (B64, ImageBytes(PNG, "base64 image")),
        ("http://example.com/a.png", "http://example.com/a.png"),
        ("file:///abs/y.png", "/abs/y.png"),
        ({"url": "https://example.com/b.png"}, "https://example.com/b.png"),
    ],
    ids=["dict_b64", "dict_path", "dict_abs", "data_uri", "bare_b64", "url", "file_url", "dict_url"],
)
def test_image_references_of_every_shape(tmp_path: Path, value, expected) -> None:
    expected = str(tmp_path / "x.png") if expected == "PATH" else expected
    assert image_ref(value, tmp_path) == expected


def test_bad_image_references_are_skips(tmp_path: Path) -> None:
    with pytest.raises(SampleError, match="data URI is not valid base64"):
        image_ref("data:image/png;base64,***", tmp_path)
    with pytest.raises(SampleError, match="neither bytes nor a path"):
        image_ref({"bytes": None, "path": None}, tmp_path)


def test_per_turn_loss_flags_and_bad_turn_orders(tmp_path: Path) -> None:
    records = [
        {"messages": [{"role": "user", "content": "Q1"}, {"role": "assistant", "content": "A1", "loss": False},
                      {"role": "user", "content": "Q2"}, {"role": "assistant", "content": "A2", "loss": True}]},
        {"conversations": [{"from": "gpt", "value": "hello"}, {"from": "human", "value": "Q"},
                           {"from": "gpt", "value": "A"}]},
        {"image": "a.png", "conversations": [["Q", "Here: <image>"]]},
        {"messages": [{"role": "user", "content": "Q"},
                      {"role": "assistant", "content": [{"type": "image"}, {"type": "text", "text": "A"}]}]},
        {"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A", "loss": False}]},
    ]  # fmt: skip
    data = chatml(write_jsonl(tmp_path / "d.jsonl", records))
    assert [m.loss for m in data[0].messages] == [True, False, True, True]
    with pytest.raises(SampleError, match="starts with an assistant turn"):
        data[1]
    for i in (2, 3):
        with pytest.raises(SampleError, match="<image> in an assistant turn"):
            data[i]
    with pytest.raises(SampleError, match='every answer has "loss": false'):
        data[4]


def test_vqa_trains_the_most_frequent_answer(tmp_path: Path) -> None:
    records = [
        {"image": "a.png", "question": "Q", "answer": ["no"] + ["yes"] * 9},
        {"image": "a.png", "question": "Q", "answer": ["cat", "dog", "dog", "cat"]},
        {"image": "a.png", "question": "Q", "answers": [{"answer": "two"}, {"answer": "2"}, {"answer": "2"}]},
    ]
    data = SourceDataset(DatasetSource(name="coco_vqa", data_files=[str(write_jsonl(tmp_path / "v.jsonl", records))]))
    assert [data[i].messages[-1].content for i in range(3)] == ["yes", "cat", "2"]


def test_parquet_source_with_image_structs(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"images": [{"bytes": PNG, "path": "p.png"}],
             "messages": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Q"}]},
                          {"role": "assistant", "content": [{"type": "text", "text": "A"}]}]}]  # fmt: skip
    path = tmp_path / "d.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    sample = chatml(path)[0]
    assert sample.messages == (Message("user", "<image>Q"), Message("assistant", "A"))
    assert sample.images == (ImageBytes(PNG, "bytes of p.png"),)
