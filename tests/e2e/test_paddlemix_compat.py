"""PaddleMIX-style argument files through the real tool: freeze patterns in PaddleMIX's module names, the
projector's own learning rate, half-precision recipes on CPU, MIXToken counted in epochs, and a quiet console."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from paddlemix.utils.io import load_safetensors

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "paddlemix" / "config"
# Gradient accumulation and loader workers on CPU are covered by the training tests; one micro-batch per step and
# no workers keep these runs to a few seconds.
FAST = ["--gradient_accumulation_steps", "1", "--dataloader_num_workers", "0"]
# PaddleMIX's LLaVA pre-training recipe (paddlemix/config/llava/pretrain.json), paths changed: freeze everything
# under its `llama` module and the head, except its projector `llama.mm_projector`.
LLAVA_PRETRAIN = {
    "freeze_include": ["*llama*", "*lm_head*"], "freeze_exclude": ["*llama.mm_projector*"], "mixtoken": False,
    "overwrite_output_dir": True, "per_device_train_batch_size": 1, "gradient_accumulation_steps": 1,
    "per_device_eval_batch_size": 1, "eval_accumulation_steps": 16, "group_by_modality_length": False,
    "num_train_epochs": 1, "learning_rate": 1e-3, "warmup_ratio": 0.03, "lr_scheduler_type": "cosine",
    "logging_steps": 1, "save_steps": 100, "evaluation_strategy": "no", "save_strategy": "epoch",
    "max_length": 2048, "fp16": False, "fp16_opt_level": "O1", "do_train": True, "do_eval": False,
    "disable_tqdm": True, "save_total_limit": 1, "eval_steps": 120,
}  # fmt: skip
# PaddleMIX's Qwen-VL SFT recipe (paddlemix/config/qwen_vl/sft_argument.json): bf16 O1, MIXToken counted in
# epochs, the vision tower frozen except its resampler `attn_pool` (the patch merger here).
QWEN_VL_SFT = {
    "freeze_include": ["*visual*"], "freeze_exclude": ["*visual.attn_pool*"], "mixtoken": True,
    "overwrite_output_dir": True, "per_device_train_batch_size": 1, "gradient_accumulation_steps": 1,
    "per_device_eval_batch_size": 1, "num_train_epochs": 1, "learning_rate": 1e-3, "weight_decay": 0.1,
    "adam_beta2": 0.95, "warmup_ratio": 0.01, "lr_scheduler_type": "cosine", "logging_steps": 1, "save_steps": 100,
    "evaluation_strategy": "epoch", "save_strategy": "epoch", "max_length": 512, "bf16": True,
    "fp16_opt_level": "O1", "do_train": True, "do_eval": False, "disable_tqdm": True,
    "load_best_model_at_end": False, "eval_with_do_generation": False, "skip_memory_metrics": False,
    "benchmark": False, "save_total_limit": 1,
}  # fmt: skip


def write_args(workspace: Path, model: str, keys: dict, name: str = "args.json") -> Path:
    data = workspace / "shapes"
    raw = {**keys, "model_name_or_path": model, "output_dir": "out",
           "dataset": {"train": [{"name": "chatml_dataset", "data_files": str(data / "train.jsonl")}],
                       "eval": [{"name": "chatml_dataset", "data_files": str(data / "eval.jsonl")}]}}  # fmt: skip
    path = workspace / name
    path.write_text(json.dumps(raw))
    return path


def changed(before: Path, after: Path) -> dict[str, bool]:
    """Checkpoint tensor name -> whether training changed it."""
    a, b = load_safetensors(before), load_safetensors(after)
    return {k: not np.array_equal(a[k], b[k]) for k in a if k in b}


@pytest.mark.parametrize("tiny_family", ["llava"], indirect=True)
def test_llava_pretrain_recipe_trains_the_projector_alone(workspace, run_tool, tiny_family) -> None:
    path = write_args(workspace, tiny_family, LLAVA_PRETRAIN)
    proc = run_tool("supervised_finetune.py", str(path), "--max_steps", "1", cwd=workspace)
    assert 'freeze pattern "*llama*" (freeze_include) uses PaddleMIX\'s module names' in proc.stderr
    assert "ignored: group_by_modality_length" in proc.stderr
    moved = changed(workspace / tiny_family / "model.safetensors", workspace / "out" / "model.safetensors")
    groups = {"tower": "vision_tower.", "projector": "multi_modal_projector.", "lm": "language_model."}
    by_group = {g: {moved[k] for k in moved if k.startswith(p)} for g, p in groups.items()}
    assert by_group == {"tower": {False}, "projector": {True}, "lm": {False}}, by_group
    check = run_tool("check_data.py", str(path), cwd=workspace)
    assert "ignored: group_by_modality_length: batches are drawn in shuffled order" in check.stderr


@pytest.mark.parametrize("tiny_family", ["llava"], indirect=True)
def test_mm_projector_lr_sets_the_projector_step(workspace, run_tool, tiny_family) -> None:
    # AdamW's first step moves every parameter with a non-zero gradient by lr * g / |g| = +-lr (bias-corrected
    # moments, no weight decay), so the largest change of a group is that group's learning rate.
    keys = {"learning_rate": 1e-3, "mm_projector_lr": 1e-4, "lr_scheduler_type": "constant", "weight_decay": 0.0,
            "max_steps": 1, "per_device_train_batch_size": 4, "logging_steps": 1, "do_eval": False}  # fmt: skip
    path = write_args(workspace, tiny_family, keys)
    proc = run_tool("supervised_finetune.py", str(path), cwd=workspace)
    assert "mm_projector_lr: 4 projector tensors train at 0.0001" in proc.stderr
    a = load_safetensors(workspace / tiny_family / "model.safetensors")
    b = load_safetensors(workspace / "out" / "model.safetensors")
    step = {p: max(float(np.abs(b[k] - a[k]).max()) for k in a if k.startswith(p))
            for p in ("multi_modal_projector.", "language_model.model.layers.")}  # fmt: skip
    assert step["multi_modal_projector."] == pytest.approx(1e-4, rel=0.02)
    assert step["language_model.model.layers."] == pytest.approx(1e-3, rel=0.02)


@pytest.mark.parametrize(
    "tiny_family, shipped",
    [("qwen2_5_vl", "qwen2_5_vl/sft_argument.json"), ("qwen3_vl", "qwen3_vl/lora_sft_argument.json")],
    indirect=["tiny_family"],
)
def test_shipped_bf16_o2_recipes_train_in_float32_on_cpu(workspace, run_tool, tiny_family, shipped) -> None:
    keys = json.loads((CONFIG / shipped).read_text())
    assert keys["bf16"] is True and keys["fp16_opt_level"] == "O2"
    path = write_args(workspace, tiny_family, keys)
    proc = run_tool("supervised_finetune.py", str(path), "--max_steps", "1", *FAST, cwd=workspace)
    notes = [line for line in proc.stderr.splitlines() if "precision: float32, not bf16 O2" in line]
    assert len(notes) == 1, proc.stderr[-3000:]
    log = [json.loads(line) for line in (workspace / "out" / "train_log.jsonl").read_text().splitlines()]
    assert np.isfinite([r["loss"] for r in log if "loss" in r]).all()


@pytest.mark.parametrize("tiny_family", ["qwen2_5_vl"], indirect=True)
def test_qwen_vl_recipe_bf16_o1_mixtoken_epochs_and_attn_pool(workspace, run_tool, tiny_family) -> None:
    path = write_args(workspace, tiny_family, QWEN_VL_SFT)
    proc = run_tool("supervised_finetune.py", str(path), cwd=workspace)
    assert "precision: float32, not bf16 O1" in proc.stderr
    planned = re.search(r"MIXToken: (\d+) packs per epoch, 1 per optimizer step: num_train_epochs 1 = max_steps (\d+)",
                        proc.stderr)  # fmt: skip
    assert planned and planned.group(1) == planned.group(2)
    steps = [json.loads(line)["step"] for line in (workspace / "out" / "train_log.jsonl").read_text().splitlines()]
    assert max(steps) == int(planned.group(2))
    moved = changed(workspace / tiny_family / "model.safetensors", workspace / "out" / "model.safetensors")
    assert {moved[k] for k in moved if k.startswith("visual.merger.")} == {True}
    assert {moved[k] for k in moved if k.startswith(("visual.blocks.", "visual.patch_embed."))} == {False}


@pytest.mark.parametrize("tiny_family", ["qwen2_5_vl"], indirect=True)
def test_freeze_pattern_matching_nothing_stops_before_loading(workspace, run_tool, tiny_family) -> None:
    path = write_args(workspace, tiny_family, {"freeze_include": ["*vit*", "model.visual.blocks.*"]})
    proc = run_tool("supervised_finetune.py", str(path), cwd=workspace, check=False)
    assert proc.returncode == 2
    assert 'freeze pattern "*vit*" (freeze_include) matches no parameter' in proc.stderr
    assert "model.visual.blocks" in proc.stderr and "model.language_model.layers" in proc.stderr
    assert "loaded qwen2_5_vl" not in proc.stderr


def test_default_run_console_fits_one_screen(workspace, run_tool) -> None:
    proc = run_tool("supervised_finetune.py", str(CONFIG / "tiny" / "sft_argument.json"), "--output_dir", "out",
                    cwd=workspace)  # fmt: skip
    console = (proc.stdout + proc.stderr).replace("\r", "\n").splitlines()
    # A progress-bar redraw is a line of the bar itself or the blank and cursor-up lines tqdm leaves behind.
    lines = [
        ln for ln in console if ln.strip() and not re.match(r"^(\x1b\[A)?\s*((Train|Predict)Process|\x1b\[A)", ln)
    ]
    assert len(lines) <= 60, "\n".join(lines)
    text = "\n".join(lines)
    for noise in ("Using download source", "PyTorch was not found", "Training Configuration Arguments",
                  "global_step: 1,", "[DataLoad", "Modified FLAGS"):  # fmt: skip
        assert noise not in text
    assert (workspace / "out" / "train_log.jsonl").read_text().count('"loss"') == 6  # every step still on disk
