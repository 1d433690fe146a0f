"""Thin and small images (text-line crops, a long screenshot bounded by `image_resolution`) get as many image tokens
here as transformers 4.57.1's processor gives them, in training (`SampleProcessor`, `length`) and at inference
(`encode_prompt`), for the Qwen-VL `smart_resize` path and LLaVA's CLIP path."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from hf_parity import HERE, REF_PYTHON, requires_reference
from PIL import Image

from paddlemix.datasets.conversation import Message, Sample
from paddlemix.models import adapter_for
from paddlemix.processors.chat_template import template_for
from paddlemix.processors.images import ImageReader

# (width, height) of text-line crops, a small icon and the 690x15420 screenshot after image_resolution 512.
SIZES = [(332, 27), (800, 20), (27, 29), (5, 9), (690, 15420)]
RESOLUTION = 512
QUESTION = "Read the text."


def hf_counts(model_dir: Path, images: list[Path], typed: bool, tmp_path: Path) -> list[dict]:
    request, out = tmp_path / "request.json", tmp_path / "out.json"
    request.write_text(json.dumps({"images": [str(p) for p in images], "question": QUESTION, "typed": typed}))
    proc = subprocess.run([REF_PYTHON, str(HERE / "hf_image_tokens.py"), str(model_dir), str(request), str(out)],
                          capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(out.read_text())


@requires_reference
@pytest.mark.parametrize("family", ["tiny_model_dir", "tiny_qwen3_vl_dir", "tiny_llava_dir"])
def test_thin_image_tokens_equal_hf(family: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    model_dir = request.getfixturevalue(family)
    ours, theirs = [], []
    for width, height in SIZES:
        path = tmp_path / f"{width}x{height}.png"
        Image.new("RGB", (width, height), (200, 30, 30)).save(path)
        ours.append(path)
        reference = path
        if max(width, height) > RESOLUTION:  # PaddleMIX's image_resolution rule, done before HF's processor
            factor = RESOLUTION / max(width, height)
            reference = tmp_path / f"{width}x{height}_bounded.png"
            Image.open(path).resize((int(width * factor), int(height * factor)), Image.NEAREST).save(reference)
        theirs.append(reference)
    adapter = adapter_for(model_dir)
    expected = hf_counts(model_dir, theirs, adapter.model_type != "llava", tmp_path)
    processor = adapter.load_processor(model_dir)
    encoder = adapter.sample_processor(processor, 1 << 20)
    encoder.reader = ImageReader(image_resolution=RESOLUTION)
    template = template_for(processor)
    image_id = processor.tokenizer.convert_tokens_to_ids(encoder.vision.image_token)
    for path, hf in zip(ours, expected):
        sample = Sample((Message("user", "<image>" + QUESTION), Message("assistant", "abc")), (str(path),))
        trained = encoder(sample, template)
        prompt = encoder.encode_prompt(Sample(sample.messages[:1], sample.images), template)
        counts = [int((x["input_ids"] == image_id).sum()) for x in (trained, prompt)]
        assert counts == [hf["image_tokens"]] * 2, (path.name, counts, hf)
        assert encoder.length(sample, template) == len(trained["input_ids"])
        if "image_grid_thw" in trained and len(hf["grid"]) == 3 and adapter.model_type != "llava":
            assert trained["image_grid_thw"][0].tolist() == hf["grid"], path.name
