"""What vLLM would ignore or refuse, said on save and merge; merged folders pass the checks of vLLM's loaders."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from paddlemix.inference.vllm_export import adapter_notes, check_model_folder, family_vision_test, smallest_rank
from paddlemix.models import ADAPTERS
from paddlemix.testing.peft_adapter import write_peft_adapter
from paddlemix.utils.safetensors_stream import checkpoint_entries

REPO = Path(__file__).resolve().parents[2]
QWEN = ADAPTERS["qwen2_5_vl"]


@pytest.mark.parametrize("rank, fit", [(1, 1), (2, 8), (8, 8), (24, 32), (300, 320), (512, 512), (513, None)])
def test_smallest_vllm_rank(rank: int, fit: int | None) -> None:
    assert smallest_rank(rank) == fit


def test_adapter_notes_name_each_problem_and_its_way_round() -> None:
    llm = ["model.language_model.layers.0.self_attn.q_proj", "model.language_model.layers.0.mlp.down_proj"]
    assert adapter_notes(16, llm, (), family_vision_test(QWEN)) == []
    [rank] = adapter_notes(4, llm)
    assert "--max-lora-rank 8" in rank
    assert "cannot serve" in adapter_notes(1024, llm)[0]
    tower = ["model.visual.blocks.0.attn.qkv", "model.visual.merger.mlp.0"]
    [vision] = adapter_notes(16, llm + tower, (), family_vision_test(QWEN))
    assert "2 LoRA modules" in vision and "--enable-tower-connector-lora" in vision
    llava = [
        "model.vision_tower.vision_model.encoder.layers.0.self_attn.q_proj",
        "model.multi_modal_projector.linear_1",
    ]
    assert "2 LoRA modules" in adapter_notes(16, llava, (), family_vision_test(ADAPTERS["llava"]))[0]
    [saved] = adapter_notes(16, llm, ("model.visual.merger",))
    assert "modules_to_save" in saved and "merge" in saved


def test_training_warns_before_it_starts(caplog: pytest.LogCaptureFixture) -> None:
    from paddlemix.trainer.sft import warn_for_vllm

    with caplog.at_level(logging.WARNING, logger="paddlemix.trainer.sft"):
        warn_for_vllm(4, ["model.visual.blocks.0.attn.qkv"], (), QWEN)
    assert [r.getMessage().startswith("for vLLM: ") for r in caplog.records] == [True, True]


@pytest.mark.parametrize("fixture", ["tiny_model_dir", "tiny_qwen3_vl_dir", "tiny_llava_dir", "tiny_paddleocr_vl_dir"])
def test_our_folders_pass_the_loader_checks(request: pytest.FixtureRequest, fixture: str) -> None:
    assert check_model_folder(request.getfixturevalue(fixture)) == []


def test_the_checks_catch_what_vllm_stops_on(tiny_model_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "architectures": ["Qwen2VLModel"],
                                                    "tie_word_embeddings": False}))  # fmt: skip
    (folder / "preprocessor_config.json").unlink()
    save_file({"base_model.model.extra.weight": np.zeros((2, 2), "float32")},
              str(folder / "extra.safetensors"))  # fmt: skip
    problems = " ".join(check_model_folder(folder))
    assert "Qwen2VLModel" in problems and "preprocessor_config.json" in problems
    names = {e.name for e in checkpoint_entries(tiny_model_dir)}
    assert ("lm_head.weight" in problems) == ("lm_head.weight" not in names)
    (folder / "config.json").write_text(json.dumps(config))
    assert "base_model.model.extra.weight" in " ".join(check_model_folder(folder))


def test_merge_reports_the_adapter_and_checks_the_merged_folder(tiny_model_dir: Path, tmp_path: Path) -> None:
    adapter = tmp_path / "adapter"
    write_peft_adapter(adapter, tiny_model_dir, QWEN.parameter_name, ("q_proj", "qkv"), rank=4)
    out = tmp_path / "merged"
    proc = subprocess.run([sys.executable, str(REPO / "paddlemix/tools/merge_lora_params.py"), "--lora_path",
                           str(adapter), "--model_name_or_path", str(tiny_model_dir), "--merge_model_path", str(out)],
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "--max-lora-rank 8" in proc.stderr and "--enable-tower-connector-lora" in proc.stderr
    assert f"vLLM reads this folder: vllm serve {out}" in proc.stdout and "warning: vLLM" not in proc.stderr
    assert check_model_folder(out) == []
