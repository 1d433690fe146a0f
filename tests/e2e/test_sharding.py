"""Sharding stages 1, 2 and 3 in 2 CPU processes through train.sh equal one process on the same global batch:
per-step losses, the saved model (gathered into the one-process HF layout), and an exact resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from paddlemix.testing.parallel_runs import assert_same_training, run_single_and_parallel

pytestmark = [pytest.mark.slow, pytest.mark.multiprocess]
REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "paddlemix" / "config" / "tiny"


def common_args(data: Path, steps: int = 3) -> list[str]:
    return ["--dataset", json.dumps({"train": [{"name": "chatml_dataset", "data_files": str(data)}]}),
            "--do_eval", "false", "--evaluation_strategy", "no", "--max_steps", str(steps), "--dataloader_shuffle",
            "false", "--save_steps", "100", "--learning_rate", "0.003", "--warmup_ratio", "0",
            "--max_grad_norm", "1.0"]  # fmt: skip


@pytest.mark.parametrize("stage", ["stage1", "stage2", "stage3"])
def test_sharded_full_sft_matches_one_process(workspace: Path, uneven_answers: Path, stage: str) -> None:
    single, sharded = run_single_and_parallel(
        workspace, TINY / "sft_argument.json", common_args(uneven_answers),
        ["--per_device_train_batch_size", "2"],
        ["--per_device_train_batch_size", "1", "--sharding", stage],
    )  # fmt: skip
    assert_same_training(single, sharded, base=workspace / "tiny_qwen2_5_vl" / "model.safetensors")
