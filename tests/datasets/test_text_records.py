"""Code, SVG and HTML records that quote `<image>` or `<img>` are read as text (HF keeps them as text); images come
from where the record shape or the source says they are, and a missing image is still reported missing."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from PIL import Image

from paddlemix.arguments import DatasetSource
from paddlemix.datasets.conversation import TEXT_GUARD, SampleError, plain_text
from paddlemix.datasets.sources import SourceDataset
from paddlemix.models import adapter_for
from paddlemix.processors.chat_template import template_for
from paddlemix.processors.sample_processor import IGNORE_INDEX
from paddlemix.testing.text_records import code_records


def source(path: Path, **keys) -> SourceDataset:
    return SourceDataset(DatasetSource(name="chatml_dataset", data_files=[str(path)], **keys))


def write(path: Path, records: list[dict]) -> Path:
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    return path


def red(path: Path, size: tuple[int, int] = (56, 56)) -> str:
    Image.new("RGB", size, (220, 20, 20)).save(path)
    return str(path)


def test_code_svg_html_records_train(tmp_path: Path, tiny_model_dir: Path, caplog) -> None:
    data = source(write(tmp_path / "code.jsonl", code_records(red(tmp_path / "a.png"))))
    processor = adapter_for(tiny_model_dir).load_processor(tiny_model_dir)
    encoder = adapter_for(tiny_model_dir).sample_processor(processor, 4096)
    template = template_for(processor)
    with caplog.at_level(logging.INFO, logger="paddlemix.datasets.sources"):
        samples = [data[i] for i in range(len(data))]
    assert [len(s.images) for s in samples] == [0, 0, 1, 0, 0]
    assert plain_text(samples[3].messages[0].content) == "Fix this HTML: <div><img>logo.png</img></div>"
    assert plain_text(samples[1].messages[1].content) == "{{ '<image>' }}\n"
    assert sum("stays text" in r.message for r in caplog.records) == 1  # said once per source
    tok = processor.tokenizer
    for sample in samples:
        out = encoder(sample, template)
        labelled = [t for t in out["labels"] if t != IGNORE_INDEX]
        answer = plain_text(sample.messages[-1].content)
        assert labelled[:-1] == tok(answer, add_special_tokens=False, split_special_tokens=True)["input_ids"]
    image_id = tok.convert_tokens_to_ids("<|image_pad|>")
    assert encoder(samples[2], template)["input_ids"].tolist().count(image_id) == 4  # 56x56: 2x2 merged patches


def test_inline_images_by_shape_or_source_key_and_missing_is_missing(tmp_path: Path) -> None:
    red(tmp_path / "logo.png")
    pairs = write(tmp_path / "pairs.jsonl", [{"conversations": [["<img>logo.png</img>What?", "red"]]},
                                              {"conversations": [["<img>gone.png</img>What?", "red"]]}])  # fmt: skip
    messages = write(tmp_path / "messages.jsonl", [
        {"messages": [{"role": "user", "content": "<img>logo.png</img>What?"}, {"role": "assistant", "content": "red"}]},
        {"messages": [{"role": "user", "content": "<img>gone.png</img>What?"}, {"role": "assistant", "content": "red"}]},
    ])  # fmt: skip
    paddlemix_pairs = source(pairs)
    assert paddlemix_pairs[0].images == (str(tmp_path / "logo.png"),)
    assert paddlemix_pairs[1].images == (str(tmp_path / "gone.png"),)  # decided by shape, never by the file
    as_text = source(messages)
    assert [as_text[i].images for i in range(2)] == [(), ()]
    assert plain_text(as_text[1].messages[0].content) == "<img>gone.png</img>What?"
    inline = source(messages, inline_images=True)
    assert inline[1].images == (str(tmp_path / "gone.png"),)
    assert source(pairs, inline_images=False)[0].images == ()
    from paddlemix.processors.images import ImageReader

    with pytest.raises(SampleError, match="image not found"):
        ImageReader().size(inline[1].images[0])


def test_image_placeholder_key_and_literal_image_text(tmp_path: Path) -> None:
    image = red(tmp_path / "a.png")
    records = [
        {"images": [image], "messages": [{"role": "user", "content": "<|img|>What is <image> in HTML?"},
                                         {"role": "assistant", "content": "red"}]},
        {"images": [image, image], "messages": [{"role": "user", "content": "<|img|><|img|>Same?"},
                                                {"role": "assistant", "content": "yes"}]},
        {"images": [image], "messages": [{"role": "user", "content": "<|img|><|img|>Same?"},
                                         {"role": "assistant", "content": "yes"}]},
    ]  # fmt: skip
    data = source(write(tmp_path / "d.jsonl", records), image_placeholder="<|img|>")
    assert data[0].messages[0].content == "<image>What is <" + TEXT_GUARD + "image> in HTML?"
    assert data[1].messages[0].content == "<image><image>Same?"
    with pytest.raises(SampleError, match="2 <|img|> placeholders but 1 images"):
        data[2]


def test_string_content_with_images_still_maps_placeholders(tmp_path: Path) -> None:
    image = red(tmp_path / "a.png")
    records = [
        {"image": image, "conversations": [{"from": "human", "value": "<image>\nColor?"}, {"from": "gpt", "value": "red"}]},
        {"image": image, "conversations": [{"from": "human", "value": "Q"}, {"from": "gpt", "value": "Here: <image>"}]},
        {"conversations": [{"from": "human", "value": "<image><image>Q"}, {"from": "gpt", "value": "A <image>"}]},
    ]  # fmt: skip
    data = source(write(tmp_path / "d.jsonl", records))
    assert data[0].messages[0].content == "<image>\nColor?" and data[0].images == (image,)
    with pytest.raises(SampleError, match="<image> in an assistant turn"):
        data[1]
    assert data[2].images == () and plain_text(data[2].messages[1].content) == "A <image>"


def test_model_marks_as_placeholder(tmp_path: Path) -> None:
    """Data written with Qwen-VL's own image marks names them as the placeholder; without the key they are text."""
    marks = "<|vision_start|><|image_pad|><|vision_end|>"
    record = {"images": [red(tmp_path / "a.png")], "messages": [{"role": "user", "content": marks + "Color?"},
                                                                {"role": "assistant", "content": "red"}]}  # fmt: skip
    path = write(tmp_path / "d.jsonl", [record])
    assert source(path, image_placeholder=marks)[0].messages[0].content == "<image>Color?"
    default = source(path)[0]  # images go in front; the typed marks stay text
    assert default.messages[0].content == "<image>" + marks + "Color?"
