"""Parity with Hugging Face transformers 4.57.1 and 5.x (`Qwen3VLForConditionalGeneration`) on the same tiny Qwen3-VL
folder (CPU, float32), through paddleformers' `Qwen3VLForConditionalGenerationDeprecated` and `Qwen3VLProcessor`.

The checks are in hf_parity.py: processor ids, grids and pixels (pixels within 1e-5), the training encoder's ids,
logits for text only and image + text (max abs diff <= 1e-4), and HF loading our merged-LoRA export.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hf_parity import HFParity

from paddlemix.testing.tiny_qwen3_vl import build_tiny_qwen3_vl


class TestQwen3VLParity(HFParity):
    pixel_atol = 1e-5

    @pytest.fixture(scope="class")
    def source_dir(self, tiny_qwen3_vl_dir: Path) -> Path:
        return tiny_qwen3_vl_dir


class TestQwen3VLTiedParity(HFParity):
    """Qwen3-VL 2B and 4B tie the head to the embeddings; the merged export then has no lm_head.weight either."""

    pixel_atol = 1e-5

    @pytest.fixture(scope="class")
    def source_dir(self, tmp_path_factory) -> Path:
        return build_tiny_qwen3_vl(tmp_path_factory.mktemp("tiny_qwen3_vl_tied"), tie_word_embeddings=True)
