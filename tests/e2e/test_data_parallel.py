"""Data parallel over 2 CPU processes (gloo) through train.sh matches one process with the same global batch."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from paddlemix.auto import AutoProcessorMIX
from paddlemix.utils.io import load_safetensors

pytestmark = [pytest.mark.slow, pytest.mark.multiprocess]
REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "paddlemix" / "config" / "tiny" / "sft_argument.json"


def equal_label_data(workspace: Path, model_dir: Path, shapes: Path) -> Path:
    """Colour questions whose answers are one token each, so every sample carries the same number of labels and
    the mean of per-process losses equals the loss over the whole global batch."""
    tokenizer = AutoProcessorMIX.from_pretrained(model_dir).tokenizer
    records = [json.loads(line) for line in shapes.read_text().splitlines()]
    keep = [r for r in records if len(tokenizer(r["messages"][1]["content"])["input_ids"]) == 1]
    for r in keep:
        r["images"] = [str(shapes.parent / p) for p in r["images"]]
    path = workspace / "equal_labels.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in keep[:16]))
    assert len(keep) >= 16
    return path


MISSING = (3, 4, 10, 17)  # positions of the records whose images are missing (3 and 4 in a row)


def with_missing_images(data: Path, workspace: Path) -> Path:
    """20 records: the 16 of `data` with 4 records whose images do not exist among them (at `MISSING`)."""
    good = data.read_text().splitlines()
    missing = json.loads(good[0])
    lines = []
    for position in range(20):
        if position in MISSING:
            lines.append(json.dumps({**missing, "images": [f"missing_{position}.png"]}))
        else:
            lines.append(good.pop(0))
    path = workspace / "with_missing.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def seven_eval_records(workspace: Path, shapes: Path) -> Path:
    records = [json.loads(line) for line in shapes.read_text().splitlines()[:7]]
    for r in records:
        r["images"] = [str(shapes.parent / p) for p in r["images"]]
    path = workspace / "eval7.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_two_process_data_parallel_matches_single_process(workspace: Path, shapes_data, run_tool) -> None:
    """Besides the weights: an epoch of 20 records with 4 missing images and an eval set of 7 records (which does
    not divide among 2 ranks) report what one process reports: the eval loss over all 7 (2 processes evaluated
    6 of them), `seen` 20 / `skipped` 4 and `seen` 7 of the eval set (rank 0's share only, 10 / 1 and 3 of 7),
    and every skip in skipped_samples.jsonl (rank 0's only). With a loader worker, whose counts stay in the worker:
    eval samples are counted by the trainer as it evaluates them (they went uncounted)."""
    data = with_missing_images(equal_label_data(workspace, workspace / "tiny_qwen2_5_vl", shapes_data["train"]),
                               workspace)  # fmt: skip
    dataset = {
        "train": [{"name": "chatml_dataset", "data_files": str(data)}],
        "eval": [{"name": "chatml_dataset", "data_files": str(seven_eval_records(workspace, shapes_data["eval"]))}],
    }
    common = ["--dataset", json.dumps(dataset), "--do_eval", "true", "--evaluation_strategy", "steps", "--eval_steps", "5",
              "--per_device_eval_batch_size", "2", "--num_train_epochs", "1", "--max_steps", "-1",
              "--max_skip_ratio", "0.5", "--dataloader_shuffle", "false", "--dataloader_num_workers", "1", "--save_steps", "100",
              "--learning_rate", "0.003", "--warmup_ratio", "0"]  # fmt: skip
    run_tool("supervised_finetune.py", str(CONFIG), *common, "--per_device_train_batch_size", "4",
             "--output_dir", "single", cwd=workspace)  # fmt: skip
    env = {**os.environ, "NPROC": "2", "PYTHON": str(Path(os.sys.executable))}
    proc = subprocess.run(["sh", str(REPO / "paddlemix" / "tools" / "train.sh"), str(CONFIG), *common,
                           "--per_device_train_batch_size", "2", "--output_dir", "dp"],
                          cwd=workspace, env=env, capture_output=True, text=True, timeout=900)  # fmt: skip
    logs = workspace / "dp" / "launch_logs"
    worker_logs = sorted(p.name for p in logs.glob("workerlog.*")) if logs.is_dir() else []
    detail = "\n".join((logs / n).read_text()[-3000:] for n in worker_logs)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:] + detail
    assert "+ " in proc.stdout and "paddle.distributed.launch --nproc_per_node 2" in proc.stdout
    assert worker_logs == ["workerlog.0", "workerlog.1"]
    records = [json.loads(line) for line in (workspace / "dp" / "train_log.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in records if "loss" in r]
    assert steps == [1, 2, 3, 4, 5], "only rank 0 writes the log"
    single = load_safetensors(workspace / "single" / "model.safetensors")
    dp = load_safetensors(workspace / "dp" / "model.safetensors")
    base = load_safetensors(workspace / "tiny_qwen2_5_vl" / "model.safetensors")
    name = "model.layers.0.self_attn.q_proj.weight"
    assert np.abs(single[name] - base[name]).max() > 1e-3
    for key in single:
        np.testing.assert_allclose(dp[key], single[key], atol=2e-5, err_msg=key)
    results = {run: json.loads((workspace / run / "all_results.json").read_text()) for run in ("single", "dp")}
    assert results["dp"]["eval_loss"] == pytest.approx(results["single"]["eval_loss"], rel=1e-5)
    expected = {"chatml_dataset:with_missing.jsonl": {"seen": 20, "skipped": 4},
                "chatml_dataset:eval7.jsonl": {"seen": 7, "skipped": 0}}  # fmt: skip
    for run in ("single", "dp"):
        assert results[run]["skipped_by_source"] == expected, run
        assert results[run]["train_samples"] == 20, run
        skipped = [json.loads(line) for line in (workspace / run / "skipped_samples.jsonl").read_text().splitlines()]
        assert sorted(r["index"] for r in skipped) == list(MISSING), run


def test_two_processes_of_batch_one_equal_one_process_of_batch_two(workspace: Path, uneven_answers: Path,
                                                                     run_tool) -> None:  # fmt: skip
    """Answers of 4 and 45 tokens: the step's loss is the token mean over both ranks, not the mean of the ranks'
    means, so the weights after two steps match the single process (rank 0 logs the same loss and grad_norm)."""
    common = ["--dataset", json.dumps({"train": [{"name": "chatml_dataset", "data_files": str(uneven_answers)}]}),
              "--do_eval", "false", "--evaluation_strategy", "no", "--max_steps", "2", "--dataloader_shuffle",
              "false", "--save_steps", "100", "--learning_rate", "1.0", "--adam_epsilon", "10", "--warmup_ratio",
              "0", "--weight_decay", "0"]  # fmt: skip
    run_tool("supervised_finetune.py", str(CONFIG), *common, "--per_device_train_batch_size", "2",
             "--output_dir", "single", cwd=workspace)  # fmt: skip
    env = {**os.environ, "NPROC": "2", "PYTHON": str(Path(os.sys.executable))}
    proc = subprocess.run(["sh", str(REPO / "paddlemix" / "tools" / "train.sh"), str(CONFIG), *common,
                           "--per_device_train_batch_size", "1", "--output_dir", "dp"],
                          cwd=workspace, env=env, capture_output=True, text=True, timeout=900)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    logs = {}
    for run in ("single", "dp"):
        records = [json.loads(line) for line in (workspace / run / "train_log.jsonl").read_text().splitlines()]
        logs[run] = {r["step"]: r for r in records if "loss" in r}
    for step in (1, 2):
        assert logs["dp"][step]["loss"] == pytest.approx(logs["single"][step]["loss"], rel=1e-5)
        assert logs["dp"][step]["grad_norm"] == pytest.approx(logs["single"][step]["grad_norm"], rel=1e-4)
    single = load_safetensors(workspace / "single" / "model.safetensors")
    dp = load_safetensors(workspace / "dp" / "model.safetensors")
    for key in single:
        np.testing.assert_allclose(dp[key], single[key], atol=2e-6, err_msg=key)
