"""Sharding stages 1, 2 and 3 in 2 CPU processes through train.sh equal one process on the same global batch:
per-step losses, the saved model (gathered into the one-process HF layout), and an exact resume; stage 3 also on
a model with weights it really splits, with gradient accumulation, an intermediate checkpoint and a resume from it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from paddlemix.testing.parallel_runs import (
    assert_same_checkpoint,
    assert_same_training,
    memory_of,
    run_launched,
    run_single,
    run_single_and_parallel,
)
from paddlemix.testing.tiny_model import build_tiny_qwen2_5_vl

pytestmark = [pytest.mark.slow, pytest.mark.multiprocess]
REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "paddlemix" / "config" / "tiny"


def common_args(data: Path, steps: int = 3) -> list[str]:
    return ["--dataset", json.dumps({"train": [{"name": "chatml_dataset", "data_files": str(data)}]}),
            "--do_eval", "false", "--evaluation_strategy", "no", "--max_steps", str(steps), "--dataloader_shuffle",
            "false", "--save_steps", "100", "--learning_rate", "0.003", "--warmup_ratio", "0",
            "--max_grad_norm", "1.0"]  # fmt: skip


# stage 2 is compared with one process in test_stage2_halves_optimizer_state_and_resumes_exactly (4 steps, resumed)
@pytest.mark.parametrize("stage", ["stage1", "stage3"])
def test_sharded_full_sft_matches_one_process(workspace: Path, uneven_answers: Path, stage: str) -> None:
    single, sharded = run_single_and_parallel(
        workspace, TINY / "sft_argument.json", common_args(uneven_answers),
        ["--per_device_train_batch_size", "2"],
        ["--per_device_train_batch_size", "1", "--sharding", stage],
    )  # fmt: skip
    assert_same_training(single, sharded, base=workspace / "tiny_qwen2_5_vl" / "model.safetensors")
    log = sharded.worker_logs[0]
    assert "CPU stand-ins" in log and "not for speed" in log
    assert ('sharding stage1: "split_param": false' in log) == (stage == "stage1")


def test_sharded_lora_stage1_matches_one_process(workspace: Path, uneven_answers: Path) -> None:
    single, sharded = run_single_and_parallel(
        workspace, TINY / "lora_sft_argument.json", common_args(uneven_answers),
        ["--per_device_train_batch_size", "2"],
        ["--per_device_train_batch_size", "1", "--sharding", "stage1"],
    )  # fmt: skip
    assert_same_training(single, sharded, files=("adapter_model.safetensors",))
    assert any("lora_B" in k and abs(v).max() > 1e-4 for k, v in sharded.weights("adapter_model.safetensors").items())


def test_stage2_halves_optimizer_state_and_resumes_exactly(workspace: Path, uneven_answers: Path) -> None:
    """Stage 2 stopped after 2 of 4 steps and started again (same command, 4 steps) ends as one process trained
    for 4 steps; each rank held about half of the optimizer state, both together all of it."""
    common = [*common_args(uneven_answers, steps=4), "--lr_scheduler_type", "constant", "--save_steps", "2"]
    parallel = ["--per_device_train_batch_size", "1", "--sharding", "stage2"]
    single = run_single(workspace, TINY / "sft_argument.json", [*common, "--per_device_train_batch_size", "2"],
                        "single")  # fmt: skip
    first = run_launched(workspace, TINY / "sft_argument.json", [*common, *parallel, "--max_steps", "2"], "sharded")
    assert sorted(first.steps) == [1, 2]
    whole = memory_of(single.console)[1]
    ranks = [memory_of(log)[1] for log in first.worker_logs]
    assert sum(ranks) == whole and max(ranks) <= 0.75 * whole, (ranks, whole)
    resumed = run_launched(workspace, TINY / "sft_argument.json", [*common, *parallel], "sharded")
    assert "resuming from" in resumed.worker_logs[0] and "checkpoint-2" in resumed.worker_logs[0]
    assert_same_training(single, resumed, base=workspace / "tiny_qwen2_5_vl" / "model.safetensors")


def test_stage3_split_weights_with_accumulation_match_one_process(workspace: Path, uneven_answers: Path) -> None:
    """Stage 3 splits only tensors over its 2^20-element segment size, which the tiny model lacks: here the MLP
    weights (64 x 16448 = 1,052,672 elements) are split. Each rank's gradient slice of such a weight lives in
    `bw_storage`, outside paddleformers' 1 / M and the step's token-mean rescale (both must reach it), and the
    weights must be gathered whole to be saved. 2 processes x batch 1 x accumulation 2 equal 1 x batch 2 x 2,
    with a checkpoint after step 2 of 3: it holds the one-process checkpoint's weights and optimizer state (each
    rank's slices in place), training after it goes on unchanged, and a run resumed from it ends as the
    uninterrupted one."""
    build_tiny_qwen2_5_vl(workspace / "split_qwen2_5_vl", intermediate_size=16448)
    common = [*common_args(uneven_answers), "--model_name_or_path", "split_qwen2_5_vl",
              "--gradient_accumulation_steps", "2", "--save_steps", "2"]  # fmt: skip
    parallel = ["--per_device_train_batch_size", "1", "--sharding", "stage3"]
    single, sharded = run_single_and_parallel(
        workspace, TINY / "sft_argument.json", common, ["--per_device_train_batch_size", "2"], parallel
    )  # fmt: skip
    split = [k for k, v in single.weights().items() if v.size > 2**20]
    assert len(split) == 6, split  # gate, up and down of both layers
    assert_same_training(single, sharded, base=workspace / "split_qwen2_5_vl" / "model.safetensors")
    assert_same_checkpoint(single.output_dir / "checkpoint-2", sharded.output_dir / "checkpoint-2")
    whole = memory_of(single.console)[0]  # each rank held about half of the parameter bytes: the split happened
    ranks = [memory_of(log)[0] for log in sharded.worker_logs]
    assert max(ranks) < 0.6 * whole, (ranks, whole)

    shutil.copytree(sharded.output_dir / "checkpoint-2", workspace / "resumed" / "checkpoint-2")
    resumed = run_launched(workspace, TINY / "sft_argument.json", [*common, *parallel], "resumed")
    assert "resuming from resumed/checkpoint-2" in resumed.worker_logs[0]
    assert sorted(resumed.steps) == [3]
    assert abs(resumed.losses()[3] - sharded.losses()[3]) <= 1e-6 * sharded.losses()[3]
    for key, value in sharded.weights().items():
        np.testing.assert_allclose(resumed.weights()[key], value, atol=1e-6, rtol=0, err_msg=key)
