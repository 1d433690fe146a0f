"""Parity with Hugging Face transformers 4.57.1 on the same tiny Qwen2.5-VL folder (CPU, float32).

The reference side runs in a separate environment named by PADDLEMIX_REF_PYTHON (built by scripts/run_tests.sh);
see tests/parity/README.md.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import paddle
import pytest
from PIL import Image

from paddlemix.auto import AutoModelMIX, AutoProcessorMIX
from paddlemix.datasets.conversation import Message, Sample
from paddlemix.models import adapter_for
from paddlemix.peft.lora import apply_lora, merge_adapter_folder, save_adapter
from paddlemix.processors.chat_template import template_for

REF_PYTHON = os.environ.get("PADDLEMIX_REF_PYTHON")
pytestmark = pytest.mark.skipif(
    not REF_PYTHON, reason="PADDLEMIX_REF_PYTHON (a Python with torch + transformers 4.57.1) is not set"
)
HERE = Path(__file__).parent
QUESTION, ANSWER = "What color is the circle?", "red"


def reference(model_dir: Path, tmp_path: Path, **request) -> dict[str, np.ndarray]:
    request_path, out = tmp_path / "request.json", tmp_path / "ref.npz"
    request_path.write_text(json.dumps(request))
    subprocess.run(
        [REF_PYTHON, str(HERE / "hf_reference.py"), str(model_dir), str(request_path), str(out)],
        check=True,
        capture_output=True,
    )
    return dict(np.load(out))


def paddle_logits(model, inputs: dict[str, np.ndarray]) -> np.ndarray:
    keys = ("input_ids", "attention_mask", "pixel_values", "image_grid_thw")
    with paddle.no_grad():
        return model(**{k: paddle.to_tensor(inputs[k]) for k in keys if k in inputs}).logits.numpy()


@pytest.fixture(scope="module")
def image_path(tmp_path_factory) -> Path:
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("img") / "img.png"
    Image.fromarray(rng.integers(0, 255, (84, 56, 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture(scope="module")
def hf_out(tiny_model_dir: Path, image_path: Path, tmp_path_factory) -> dict[str, np.ndarray]:
    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]},
        {"role": "assistant", "content": [{"type": "text", "text": ANSWER}]},
    ]
    return reference(tiny_model_dir, tmp_path_factory.mktemp("ref"), messages=messages, images=[str(image_path)])


def test_processor_matches_hf(tiny_model_dir: Path, image_path: Path, hf_out) -> None:
    processor = AutoProcessorMIX.from_pretrained(tiny_model_dir)
    ours = processor(text=[str(hf_out["text"])], images=[Image.open(image_path).convert("RGB")], return_tensors="np")
    np.testing.assert_array_equal(np.asarray(ours["input_ids"]), hf_out["input_ids"])
    np.testing.assert_array_equal(np.asarray(ours["image_grid_thw"]), hf_out["image_grid_thw"])
    np.testing.assert_allclose(np.asarray(ours["pixel_values"]), hf_out["pixel_values"], atol=1e-6)


def test_training_encoder_matches_hf(tiny_model_dir: Path, image_path: Path, hf_out) -> None:
    processor = AutoProcessorMIX.from_pretrained(tiny_model_dir)
    encoder = adapter_for(tiny_model_dir).sample_processor(processor, 4096)
    sample = Sample((Message("user", "<image>" + QUESTION), Message("assistant", ANSWER)), (str(image_path),))
    ours = encoder(sample, template_for(processor))
    hf_ids = hf_out["input_ids"][0]
    # HF's template ends the last turn with "<|im_end|>\n"; both must agree on every token they share.
    np.testing.assert_array_equal(ours["input_ids"], hf_ids[: len(ours["input_ids"])])
    assert len(hf_ids) - len(ours["input_ids"]) <= 1
    np.testing.assert_allclose(ours["pixel_values"], hf_out["pixel_values"], atol=1e-6)


def test_logits_match_hf(tiny_model_dir: Path, hf_out) -> None:
    model = AutoModelMIX.from_pretrained(tiny_model_dir)
    diff = np.abs(paddle_logits(model, hf_out) - hf_out["logits"]).max()
    print(f"max |logits - HF logits| = {diff:.2e}")
    assert diff <= 1e-4


def test_hf_loads_merged_lora_model_with_same_logits(tiny_model_dir: Path, hf_out, tmp_path: Path) -> None:
    lora = apply_lora(AutoModelMIX.from_pretrained(tiny_model_dir), adapter_for(tiny_model_dir).lora_targets, 4, 8)
    rng = np.random.default_rng(0)
    for name, param in lora.model.named_parameters():
        if "lora_" in name:
            param.set_value(rng.normal(0, 0.05, param.shape).astype("float32"))
    expected = paddle_logits(lora, hf_out)
    save_adapter(lora, tmp_path / "adapter")
    merged = merge_adapter_folder(tiny_model_dir, tmp_path / "adapter", tmp_path / "merged")
    inputs = tmp_path / "inputs.npz"
    np.savez(inputs, **{k: hf_out[k] for k in ("input_ids", "attention_mask", "pixel_values", "image_grid_thw")})
    hf_merged = reference(merged, tmp_path, inputs=str(inputs))
    diff = np.abs(hf_merged["logits"] - expected).max()
    print(f"max |HF(merged) - paddle(base+LoRA)| = {diff:.2e}")
    assert diff <= 1e-4
