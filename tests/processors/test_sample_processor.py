from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from paddlemix.auto import AutoProcessorMIX
from paddlemix.datasets.conversation import Message, Sample, SampleError
from paddlemix.models import adapter_for
from paddlemix.processors.chat_template import template_for
from paddlemix.processors.images import ImageReader
from paddlemix.processors.sample_processor import IGNORE_INDEX, SampleProcessor


@pytest.fixture(scope="module")
def encoder(tiny_model_dir: Path) -> tuple[SampleProcessor, object, object]:
    processor = AutoProcessorMIX.from_pretrained(tiny_model_dir)
    adapter = adapter_for(tiny_model_dir)
    template = template_for(processor)
    return (
        adapter.sample_processor(processor, 256),
        template,
        processor.tokenizer,
    )


def image(tmp_path: Path, size=(56, 84), name="a.png") -> str:
    path = tmp_path / name
    Image.new("RGB", size, (200, 10, 10)).save(path)
    return str(path)


def labelled_text(tokenizer, out: dict) -> str:
    """Decode the tokens that carry loss: labels are shifted, so label t is the token at position t+1."""
    ids = [int(t) for t in out["labels"] if t != IGNORE_INDEX]
    return tokenizer.decode(ids)


def test_loss_only_on_assistant_answers_and_labels_are_shifted(encoder, tmp_path: Path) -> None:
    proc, template, tokenizer = encoder
    sample = Sample(
        (
            Message("user", "<image>What color is the circle?"),
            Message("assistant", "red"),
            Message("user", "And the shape?"),
            Message("assistant", "circle"),
        ),
        (image(tmp_path),),
    )
    out = proc(sample, template)
    assert labelled_text(tokenizer, out) == "red<|im_end|>circle<|im_end|>"
    ids, labels = out["input_ids"], out["labels"]
    keep = labels != IGNORE_INDEX
    np.testing.assert_array_equal(labels[:-1][keep[:-1]], ids[1:][keep[:-1]])
    assert labels[-1] == IGNORE_INDEX


def test_image_tokens_match_patches(encoder, tmp_path: Path) -> None:
    proc, template, tokenizer = encoder
    sample = Sample((Message("user", "<image>Q"), Message("assistant", "A")), (image(tmp_path, (56, 84)),))
    out = proc(sample, template)
    image_id = tokenizer.convert_tokens_to_ids("<|image_pad|>")
    ((t, h, w),) = out["image_grid_thw"]
    assert (t, h, w) == (1, 6, 4)  # 84x56 px -> 6x4 patches of 14 px
    assert int((out["input_ids"] == image_id).sum()) == t * h * w // 4
    assert out["pixel_values"].shape == (t * h * w, 3 * 2 * 14 * 14)


def test_two_images_expand_in_order(encoder, tmp_path: Path) -> None:
    proc, template, tokenizer = encoder
    images = (image(tmp_path, (56, 56), "a.png"), image(tmp_path, (112, 56), "b.png"))
    sample = Sample((Message("user", "<image>first <image>second"), Message("assistant", "A")), images)
    out = proc(sample, template)
    text = tokenizer.decode(out["input_ids"])
    assert text.count("<|image_pad|>") == 4 + 8
    assert "<|vision_start|>" + "<|image_pad|>" * 4 + "<|vision_end|>first" in text


def test_too_long_and_bad_images_are_sample_errors(encoder, tmp_path: Path) -> None:
    proc, template, _ = encoder
    long_sample = Sample((Message("user", "word " * 300), Message("assistant", "A")))
    with pytest.raises(SampleError, match="exceed max_length"):
        proc(long_sample, template)
    with pytest.raises(SampleError, match="not found"):
        ImageReader().load(str(tmp_path / "missing.png"))
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    with pytest.raises(SampleError, match="cannot be decoded"):
        ImageReader().load(str(tmp_path / "broken.png"))
    assert ImageReader().load(image(tmp_path, (20, 100), "small.png")).size == (20, 100)  # resized up later
    with pytest.raises(SampleError, match="aspect ratio"):
        ImageReader().load(image(tmp_path, (30, 6100), "thin.png"))


def test_prompt_encoding_ends_with_generation_prompt(encoder, tmp_path: Path) -> None:
    proc, template, tokenizer = encoder
    out = proc.encode_prompt(Sample((Message("user", "<image>Q"),), (image(tmp_path),)), template)
    assert tokenizer.decode(out["input_ids"]).endswith("<|im_start|>assistant\n")
    assert "labels" not in out


# A Qwen-style template that takes only typed content parts and marks the answer with {% generation %}.
TYPED_GENERATION_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['role'] == 'assistant' %}{% generation %}"
    "{% for part in message['content'] %}{{ part['text'] }}{% endfor %}<|im_end|>{% endgeneration %}{{ '\\n' }}"
    "{% else %}{% for part in message['content'] %}{% if part['type'] == 'image' %}"
    "<|vision_start|><|image_pad|><|vision_end|>{% else %}{{ part['text'] }}{% endif %}{% endfor %}"
    "<|im_end|>{{ '\\n' }}{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def test_typed_content_template_with_generation_spans_encodes(encoder, tmp_path: Path) -> None:
    from paddlemix.processors.chat_template import JinjaChatTemplate

    enc, _, tokenizer = encoder
    template = JinjaChatTemplate(TYPED_GENERATION_TEMPLATE)
    assert template.typed_content and template.image_text == "<|vision_start|><|image_pad|><|vision_end|>"
    sample = Sample((Message("user", "<image>What color is the circle?"), Message("assistant", "red"),
                     Message("user", "And the square?"), Message("assistant", "blue")), (image(tmp_path),))  # fmt: skip
    out = enc(sample, template)
    assert labelled_text(tokenizer, out) == "red<|im_end|>blue<|im_end|>"
    image_pad = tokenizer.convert_tokens_to_ids("<|image_pad|>")
    t, h, w = out["image_grid_thw"][0]
    assert int((out["input_ids"] == image_pad).sum()) == t * h * w // 4
    text = tokenizer.decode([int(i) for i in out["input_ids"] if i != image_pad])
    assert text.startswith("<|im_start|>user\n<|vision_start|><|vision_end|>What color is the circle?<|im_end|>\n")


def test_image_resolution_gives_the_grid_of_the_smaller_image(encoder, tmp_path: Path) -> None:
    enc, template, _ = encoder
    wide, small = image(tmp_path, (800, 400), "wide.png"), image(tmp_path, (512, 256), "small.png")
    enc = copy.copy(enc)
    enc.max_length, enc.reader = 4096, ImageReader(image_resolution=512)
    encoded = {}
    for ref in (wide, small):
        sample = Sample((Message("user", "<image>what?"), Message("assistant", "red")), (ref,))
        out = enc(sample, template)
        assert enc.length(sample, template) == len(out["input_ids"])  # planning and decoding agree
        encoded[ref] = out
    assert encoded[wide]["image_grid_thw"].tolist() == encoded[small]["image_grid_thw"].tolist()
    assert encoded[wide]["pixel_values"].shape == encoded[small]["pixel_values"].shape
    assert len(encoded[wide]["input_ids"]) == len(encoded[small]["input_ids"])
