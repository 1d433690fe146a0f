"""Parity with Hugging Face transformers 4.57.1 and 5.x (`Qwen2VLForConditionalGeneration`, `Qwen2VLProcessor`) on tiny
Qwen2-VL folders (CPU, float32), through this toolkit's Paddle vision tower on paddleformers' Qwen2.5-VL language
model and paddleformers' `Qwen2VLProcessor`.

The checks are in hf_parity.py: processor ids, grids and pixels, the training encoder's ids, logits for text only
and image + text (max abs diff <= 1e-4), and HF loading our merged-LoRA export.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import paddle
import pytest
from hf_parity import QUESTION, HFParity, reference, requires_reference
from PIL import Image

from paddlemix.auto import AutoModelMIX, AutoProcessorMIX
from paddlemix.testing.tiny_qwen2_vl import build_tiny_qwen2_vl


class TestQwen2VLParity(HFParity):
    """The folder each transformers version saves (4.57: text fields at the top level and in `text_config`; 5.x:
    `rope_parameters` in both)."""

    pixel_atol = 1e-6

    @pytest.fixture(scope="class")
    def source_dir(self, tiny_qwen2_vl_dir: Path) -> Path:
        return tiny_qwen2_vl_dir


class TestQwen2VLReleaseParity(HFParity):
    """The released Qwen2-VL-2B's layout: a flat config.json (`in_chans`, `{"type": "mrope"}`) and a head tied to
    the embeddings, so neither the checkpoint nor the merged export has lm_head.weight; read as the release wrote
    it (not re-saved by transformers)."""

    pixel_atol = 1e-6
    resave = False

    @pytest.fixture(scope="class")
    def source_dir(self, tmp_path_factory) -> Path:
        folder = tmp_path_factory.mktemp("tiny_qwen2_vl_release")
        return build_tiny_qwen2_vl(folder, config_layout="release", tie_word_embeddings=True)


class TestQwen2VLRealHeadSizesParity(HFParity):
    """Qwen2-VL's real head sizes, where the rotary layouts depend on them: text heads of 128 with mRoPE sections
    [16, 24, 24] and grouped KV heads, vision heads of 80 (20 rotary frequencies per axis), on few heads and one
    layer each so the check stays fast."""

    pixel_atol = 1e-6

    @pytest.fixture(scope="class")
    def source_dir(self, tmp_path_factory) -> Path:
        folder = tmp_path_factory.mktemp("qwen2_vl_real_heads")
        return build_tiny_qwen2_vl(
            folder, hidden_size=512, num_layers=1, num_heads=4, num_kv_heads=2, intermediate_size=256,
            vision_hidden=160, vision_depth=1, vision_heads=2,
        )  # fmt: skip


@requires_reference
def test_greedy_generation_matches_hf(tiny_qwen2_vl_dir: Path, tmp_path: Path) -> None:
    """`generate` (paddleformers' loop on this model, as infer.py and the eval callback use it) gives transformers'
    greedy tokens for an image question."""
    rng = np.random.default_rng(1)
    image = Image.fromarray(rng.integers(0, 255, (56, 84, 3), dtype=np.uint8))
    processor = AutoProcessorMIX.from_pretrained(tiny_qwen2_vl_dir)
    prompt = processor.tokenizer.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}],
        tokenize=False,
        add_generation_prompt=True,
    )
    inputs = {k: np.asarray(v) for k, v in processor(text=[prompt], images=[image], return_tensors="np").items()}
    np.savez(tmp_path / "inputs.npz", **inputs)
    hf = reference(tiny_qwen2_vl_dir, tmp_path, inputs=str(tmp_path / "inputs.npz"), max_new_tokens=12)
    model = AutoModelMIX.from_pretrained(tiny_qwen2_vl_dir)
    model.eval()
    with paddle.no_grad():
        ours = model.generate(**{k: paddle.to_tensor(v) for k, v in inputs.items()}, max_new_tokens=12)[0].numpy()
    expected = hf["generated"][0]
    assert len(expected) == 12, "a continuation that stops at once checks nothing"
    np.testing.assert_array_equal(ours[0, : len(expected)], expected)
