"""Parity with Hugging Face transformers 4.57.1 on the same tiny Qwen2.5-VL folder (CPU, float32).

The checks are in hf_parity.py; the reference side runs in the environment named by PADDLEMIX_REF_PYTHON (built by
scripts/run_tests.sh); see tests/parity/README.md.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hf_parity import HFParity


class TestQwen2_5_VLParity(HFParity):
    pixel_atol = 1e-6

    @pytest.fixture(scope="class")
    def model_dir(self, tiny_model_dir: Path) -> Path:
        return tiny_model_dir
