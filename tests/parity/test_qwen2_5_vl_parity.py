"""Parity with Hugging Face transformers 4.57.1 and 5.x on the same tiny Qwen2.5-VL folder (CPU, float32).

The checks are in hf_parity.py; the reference side runs in the environment named by PADDLEMIX_REF_PYTHON (built by
scripts/run_tests.sh); see tests/parity/README.md.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hf_parity import HFParity, requires_reference


class TestQwen2_5_VLParity(HFParity):
    pixel_atol = 1e-6

    @pytest.fixture(scope="class")
    def source_dir(self, tiny_model_dir: Path) -> Path:
        return tiny_model_dir


@requires_reference
def test_training_continues_an_adapter_made_by_peft(
    tiny_model_dir: Path, shapes_data, tmp_path: Path, run_tool
) -> None:
    """`lora_path` = a folder written by `PeftModel.save_pretrained` (q/v LoRA + the merger as modules_to_save):
    a run with learning rate 0 writes back exactly PEFT's tensors, under PEFT's own keys."""
    import json

    import numpy as np
    from hf_parity import peft_reference

    from paddlemix.utils.io import load_safetensors

    inputs = {"input_ids": np.arange(2, 14)[None]}
    spec = {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"], "modules_to_save": ["merger"]}
    peft_reference("make", tiny_model_dir, tmp_path / "theirs", inputs, tmp_path, json.dumps(spec))
    args = {"model_name_or_path": str(tiny_model_dir), "output_dir": str(tmp_path / "out"), "device": "cpu",
            "dataset": {"train": [{"name": "chatml_dataset", "data_files": str(shapes_data["train"])}]},
            "lora": True, "lora_path": str(tmp_path / "theirs"), "learning_rate": 0.0, "max_steps": 1,
            "per_device_train_batch_size": 2, "report_to": "none"}  # fmt: skip
    (tmp_path / "args.json").write_text(json.dumps(args))
    run_tool("supervised_finetune.py", str(tmp_path / "args.json"), cwd=tmp_path)
    theirs = load_safetensors(tmp_path / "theirs" / "adapter_model.safetensors")
    ours = load_safetensors(tmp_path / "out" / "adapter_model.safetensors")
    assert set(ours) == set(theirs) and any(".visual.merger." in k for k in ours)
    for key, value in theirs.items():
        np.testing.assert_array_equal(ours[key], value, err_msg=key)
