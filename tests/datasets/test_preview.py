"""What check_data --show prints: labelled spans marked, image tokens collapsed, typed control strings apart from
the control tokens; and the aligned labels --dump writes."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from paddlemix.datasets.conversation import Message, Sample
from paddlemix.datasets.preview import aligned_labels, collapsed_tokens, format_preview
from paddlemix.models import adapter_for
from paddlemix.processors.chat_template import template_for
from paddlemix.processors.sample_processor import IGNORE_INDEX


def test_shown_sample_marks_labels_collapses_images_and_escapes_typed_tokens(tiny_model_dir: Path, tmp_path) -> None:
    processor = adapter_for(tiny_model_dir).load_processor(tiny_model_dir)
    encoder = adapter_for(tiny_model_dir).sample_processor(processor, 4096)
    Image.new("RGB", (332, 27), (0, 0, 200)).save(tmp_path / "line.png")
    sample = Sample(
        (Message("user", "<image>Color?"), Message("assistant", "blue <|im_end|>")), (str(tmp_path / "line.png"),)
    )
    out = encoder(sample, template_for(processor))
    entry = {"source": "s", "index": 3, "input_ids": out["input_ids"].tolist(),
             "labels": aligned_labels(out["labels"].tolist()), "image_grid_thw": out["image_grid_thw"].tolist()}  # fmt: skip
    collapse = collapsed_tokens(processor.tokenizer, ["<|image_pad|>", "<|video_pad|>"])
    shown = format_preview(entry, processor.tokenizer, collapse, encoder.special_tokens)
    assert shown.endswith(
        "<|im_start|>user\n<|vision_start|><|image_pad|>x12<|vision_end|>Color?<|im_end|>\n"
        "<|im_start|>assistant\n[[blue \\<|im_end|><|im_end|>]]\n"
    )
    assert shown.startswith("--- s record #3: ") and "images [[1, 2, 24]]" in shown.splitlines()[0]


def test_aligned_labels_follow_input_ids() -> None:
    assert aligned_labels([IGNORE_INDEX, 7, 8, IGNORE_INDEX]) == [IGNORE_INDEX, IGNORE_INDEX, 7, 8]
