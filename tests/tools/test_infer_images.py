"""infer.py answers about thin and small images (text-line crops, a long screenshot under the training's
`image_resolution`) instead of refusing them, and reads the record-text settings of the training."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

from paddlemix.datasets.conversation import IMAGE_PLACEHOLDER, plain_text
from paddlemix.inference.generation import question_message
from paddlemix.tools.infer import parse, training_data_settings


def test_infer_reads_the_training_data_settings(tmp_path: Path) -> None:
    (tmp_path / "run_args.json").write_text(json.dumps({"image_resolution": 512, "split_special_tokens": False}))
    base = ["--model_name_or_path", "m", "--lora_path", str(tmp_path), "--question", "q"]
    assert training_data_settings(parse(base)) == {"image_resolution": 512, "split_special_tokens": False}
    given = parse([*base, "--image_resolution", "256", "--split_special_tokens", "true"])
    assert training_data_settings(given) == {"image_resolution": 256, "split_special_tokens": True}
    bare = parse(["--model_name_or_path", str(tmp_path / "none"), "--question", "q"])
    assert training_data_settings(bare) == {"image_resolution": None, "split_special_tokens": True}


def test_infer_answers_thin_images(tiny_model_dir: Path, tmp_path: Path, run_tool) -> None:
    sizes = [(332, 27), (800, 20), (27, 29), (690, 15420)]
    images = []
    for w, h in sizes:
        Image.new("RGB", (w, h), (20, 20, 220)).save(tmp_path / f"{w}x{h}.png")
        images += ["--image", str(tmp_path / f"{w}x{h}.png")]
    proc = run_tool("infer.py", "--model_name_or_path", str(tiny_model_dir), *images, "--question", "Text?",
                    "--image_resolution", "512", "--max_new_tokens", "2", cwd=tmp_path, timeout=300)  # fmt: skip
    assert proc.stdout.startswith("generated ")


def test_question_without_images_keeps_image_text() -> None:
    asked = question_message("What does <image> do?")
    assert IMAGE_PLACEHOLDER not in asked.content and plain_text(asked.content) == "What does <image> do?"
    assert question_message("Color?", ["a.png"]).content == "<image>Color?"
