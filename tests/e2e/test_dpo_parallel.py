"""Preference training over 2 CPU processes through train.sh equals one process on the same global batch: data
parallel with sharding stage 1 (the loss of a step is the mean over its pairs on all ranks; optimizer state split)
and tensor parallel degree 2 (LoRA; the reference, the adapters switched off, is split like the model), and plain
data parallel with full fine-tuning (a trained LM head, a frozen reference copy per rank). Per-step losses, the
preference metrics (summed over the ranks) and the saved weights agree; one run of each serves every assertion
(CI time). Evaluation runs on both ranks and gives the one-process figures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from paddlemix.testing.pairs import write_shape_pairs
from paddlemix.testing.parallel_runs import assert_same_training, run_launched, run_single

pytestmark = [pytest.mark.slow, pytest.mark.multiprocess]
CONFIG = Path(__file__).resolve().parents[2] / "paddlemix" / "config" / "tiny" / "lora_dpo_argument.json"
# Adam with a large epsilon (an SGD-like step), as the tensor-parallel SFT test: plain Adam turns float rounding
# of near-zero gradients (split matmuls sum in another order) into full-size updates.
COMMON = ["--do_eval", "true", "--evaluation_strategy", "steps", "--eval_steps", "3", "--max_steps", "3", "--dataloader_shuffle", "false",
          "--save_steps", "100", "--learning_rate", "1.0", "--adam_epsilon", "10", "--weight_decay", "0",
          "--warmup_ratio", "0", "--pref_ftx", "0.5"]  # fmt: skip
FULL = ["--lora", "false"]
METRICS = ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "logps/chosen",
           "logps/rejected", "sft_loss")  # fmt: skip


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, shapes_data: dict) -> dict:
    workspace = tmp_path_factory.mktemp("dpo_parallel")
    (workspace / "tiny_qwen2_5_vl").symlink_to(tiny_model_dir)
    write_shape_pairs(shapes_data["train"], workspace / "pairs.jsonl", "swift")
    write_shape_pairs(shapes_data["eval"], workspace / "eval.jsonl", "trl")
    sources = {"train": [{"name": "chatml_dataset", "data_files": "pairs.jsonl"}],
               "eval": [{"name": "chatml_dataset", "data_files": "eval.jsonl"}]}  # fmt: skip
    common = [*COMMON, "--per_device_eval_batch_size", "3", "--dataset", json.dumps(sources)]
    return {
        "single": run_single(workspace, CONFIG, [*common, "--per_device_train_batch_size", "4"], "single"),
        "sharded": run_launched(
            workspace, CONFIG, [*common, "--per_device_train_batch_size", "2", "--sharding", "stage1"], "sharded"
        ),  # fmt: skip
        "tp": run_launched(
            workspace, CONFIG, [*common, "--per_device_train_batch_size", "4", "--tensor_parallel_degree", "2"], "tp"
        ),  # fmt: skip
        # full fine-tuning, plain data parallel: a trained LM head and the frozen reference copy on every rank
        "single_full": run_single(
            workspace, CONFIG, [*common, *FULL, "--per_device_train_batch_size", "4"], "single_full"
        ),  # fmt: skip
        "dp_full": run_launched(workspace, CONFIG, [*common, *FULL, "--per_device_train_batch_size", "2"], "dp_full"),
    }


@pytest.mark.parametrize("mode", ["sharded", "tp", "dp_full"])
def test_two_process_dpo_trains_as_one_process(runs: dict, mode: str) -> None:
    full = mode == "dp_full"
    single, parallel = runs["single_full" if full else "single"], runs[mode]
    weights = "model.safetensors" if full else "adapter_model.safetensors"
    assert_same_training(single, parallel, files=(weights,), weight_tol=5e-5)
    for step, record in single.steps.items():
        for key in METRICS:
            assert parallel.steps[step][key] == pytest.approx(record[key], abs=1e-4), (step, key)
    assert single.steps[1]["rewards/margins"] == 0.0 and abs(single.steps[3]["rewards/margins"]) > 1e-3  # it trained
    # evaluation: the mean over the 8 eval pairs, each once, whichever rank (and batch of 3) evaluated it
    evals = [json.loads(line) for line in (parallel.output_dir / "train_log.jsonl").read_text().splitlines()]
    one = [json.loads(line) for line in (single.output_dir / "train_log.jsonl").read_text().splitlines()]
    evals, one = [r for r in evals if "eval_loss" in r], [r for r in one if "eval_loss" in r]
    assert len(evals) == len(one) == 1
    for key in ("eval_loss", *(f"eval_{k}" for k in METRICS)):
        assert evals[0][key] == pytest.approx(one[0][key], abs=1e-4), key
    engaged = "tensor parallel rank 1/2" if mode == "tp" else "rank 1 of 2 holds parameters"
    assert engaged in "".join(parallel.worker_logs)
    if not full:
        adapter = parallel.weights(weights)
        assert any("lora_B" in k and abs(v).max() > 1e-4 for k, v in adapter.items())
