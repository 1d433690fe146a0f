"""Our streaming merge of a PEFT-format adapter against PEFT's own `merge_and_unload` in transformers 4.57.1.

A random non-zero LoRA (language model q/k/v/o/gate/up/down and the vision blocks' qkv, rank 4) plus a fully
trained projector (`modules_to_save`) is written in PEFT's file format for the tiny Qwen2.5-VL, merged by
merge_lora_params.py, and loaded by transformers: no missing or unexpected keys, weights equal to PEFT's merge (float32:
1e-6; bfloat16 sharded base: one bf16 ulp) and logits on an image + text prompt equal to PEFT's merged model.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
from hf_parity import REF_PYTHON, requires_reference
from PIL import Image

from paddlemix.models import ADAPTERS
from paddlemix.testing.checkpoints import copy_sharded
from paddlemix.testing.peft_adapter import write_peft_adapter

HERE = Path(__file__).parent
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "attn.qkv")


@requires_reference
def test_merged_folder_equals_peft_merge_and_unload(tiny_model_dir: Path, tmp_path: Path, run_tool) -> None:
    cases = []
    for dtype in ("float32", "bfloat16"):
        base = tiny_model_dir if dtype == "float32" else copy_sharded(tiny_model_dir, tmp_path / "base", shards=3)
        write_peft_adapter(
            tmp_path / f"adapter_{dtype}", base, ADAPTERS["qwen2_5_vl"].parameter_name, TARGETS, rank=4, alpha=8,
            modules_to_save=("model.visual.merger",), seed=3,
        )  # fmt: skip
        run_tool("merge_lora_params.py", "--lora_path", f"adapter_{dtype}", "--model_name_or_path", str(base),
                 "--merge_model_path", f"merged_{dtype}", "--max_shard_size", "400KB", cwd=tmp_path)  # fmt: skip
        assert len(list((tmp_path / f"merged_{dtype}").glob("model-*-of-*.safetensors"))) >= 2
        cases.append(f"{base},adapter_{dtype},merged_{dtype},{dtype}")
    image = tmp_path / "image.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (84, 56, 3), dtype=np.uint8)).save(image)
    out = tmp_path / "ref.json"
    args = [str(HERE / "hf_peft_merge.py"), str(image), str(out), *cases]
    proc = subprocess.run([REF_PYTHON, *args], cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    for dtype, result in zip(("float32", "bfloat16"), json.loads(out.read_text())):
        print(f"{dtype}: { ({k: v for k, v in result.items() if k != 'changed_tensors'}) }")
        assert not any(result["loading_info"].values()), result["loading_info"]
        changed = result["changed_tensors"]
        assert sum(".self_attn." in k or ".mlp." in k for k in changed) >= 14 and any(".merger." in k for k in changed)
        if dtype == "float32":
            assert result["max_weight_diff"] <= 1e-6 and result["max_logits_diff"] <= 1e-4
        else:
            assert result["max_weight_ulps"] <= 1.0
