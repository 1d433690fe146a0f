"""Pipeline parallel over 2 CPU processes (gloo stand-ins) through train.sh trains Qwen2.5-VL exactly as one
process does on the same global batch: per-step losses, gradient norms and the saved model (one-process names)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from paddlemix.testing.tiny_qwen2_vl import build_tiny_qwen2_vl
from paddlemix.utils.io import load_safetensors

pytestmark = [pytest.mark.slow, pytest.mark.multiprocess]
REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "paddlemix" / "config" / "tiny" / "sft_argument.json"


def step_logs(folder: Path) -> dict[int, dict]:
    records = [json.loads(line) for line in (folder / "train_log.jsonl").read_text().splitlines()]
    return {r["step"]: r for r in records if "loss" in r}


def run_pipeline(workspace: Path, common: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "NPROC": "2", "PYTHON": sys.executable}
    return subprocess.run(["sh", str(REPO / "paddlemix" / "tools" / "train.sh"), str(CONFIG), *common,
                           "--pipeline_parallel_degree", "2", "--output_dir", "pp"],
                          cwd=workspace, env=env, capture_output=True, text=True, timeout=900)  # fmt: skip


def test_two_stage_pipeline_matches_one_process(workspace: Path, run_tool) -> None:
    """Full SFT, 3 steps of 2 micro-batches of 2 rows (images and text, padded to different lengths): stage 0 holds
    the vision tower, embeddings and decoder layer 0, stage 1 layer 1, the norm, head and loss. The per-stage
    checkpoint of step 2 then resumes to the same final model."""
    common = ["--do_eval", "false", "--evaluation_strategy", "no", "--max_steps", "3", "--dataloader_shuffle",
              "false", "--save_steps", "2", "--per_device_train_batch_size", "2", "--gradient_accumulation_steps",
              "2", "--warmup_ratio", "0"]  # fmt: skip
    run_tool("supervised_finetune.py", str(CONFIG), *common, "--output_dir", "single", cwd=workspace)
    proc = run_pipeline(workspace, common)
    logs = workspace / "pp" / "launch_logs"
    worker_logs = {p.name: p.read_text() for p in sorted(logs.glob("workerlog.*"))} if logs.is_dir() else {}
    detail = "\n".join(text[-3000:] for text in worker_logs.values())
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:] + detail
    assert sorted(worker_logs) == ["workerlog.0", "workerlog.1"]
    assert (
        "CPU stand-ins for Paddle's GPU collectives are on (tensor x pipeline x sharding degrees 1 x 2 x 1)"
        in (worker_logs["workerlog.0"])
    )
    assert "pipeline stage 0" in worker_logs["workerlog.0"] and "pipeline stage 1" in worker_logs["workerlog.1"]

    single, pp = step_logs(workspace / "single"), step_logs(workspace / "pp")
    assert sorted(pp) == [1, 2, 3]
    for step in (1, 2, 3):
        assert abs(pp[step]["loss"] - single[step]["loss"]) <= 1e-5, step
        assert pp[step]["grad_norm"] == pytest.approx(single[step]["grad_norm"], rel=1e-4)

    saved_single = load_safetensors(workspace / "single" / "model.safetensors")
    saved_pp = load_safetensors(workspace / "pp" / "model.safetensors")
    base = load_safetensors(workspace / "tiny_qwen2_5_vl" / "model.safetensors")
    assert sorted(saved_pp) == sorted(saved_single)
    for name in ("model.layers.0.self_attn.q_proj.weight", "model.layers.1.mlp.down_proj.weight", "lm_head.weight",
                 "visual.blocks.0.attn.qkv.weight"):  # fmt: skip
        assert np.abs(saved_single[name] - base[name]).max() > 1e-4, f"{name} did not train"
    for name in saved_single:
        np.testing.assert_allclose(saved_pp[name], saved_single[name], atol=1e-4, rtol=0, err_msg=name)

    # Resume: without the final model, the same command continues from checkpoint-2 and ends where the run ended.
    (workspace / "pp" / "model.safetensors").rename(workspace / "pp" / "uninterrupted.safetensors")
    proc = run_pipeline(workspace, common)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "resuming from pp/checkpoint-2" in (workspace / "pp" / "launch_logs" / "workerlog.0").read_text()
    resumed = load_safetensors(workspace / "pp" / "model.safetensors")
    for name in saved_pp:
        np.testing.assert_allclose(resumed[name], saved_pp[name], atol=1e-6, rtol=0, err_msg=name)


def test_tied_embeddings_pipeline_matches_one_process(workspace: Path, run_tool) -> None:
    """Qwen2-VL with its head tied to the embeddings (as Qwen2-VL-2B): the embedding matrix lives on both stages as
    one shared layer; with gradient clipping on (its norm counts the tied weight once) it trains as one process."""
    build_tiny_qwen2_vl(workspace / "tied", tie_word_embeddings=True)
    common = ["--model_name_or_path", "tied", "--do_eval", "false", "--evaluation_strategy", "no", "--max_steps",
              "3", "--dataloader_shuffle", "false", "--save_steps", "100", "--per_device_train_batch_size", "2",
              "--gradient_accumulation_steps", "2", "--warmup_ratio", "0", "--max_grad_norm", "1.0"]  # fmt: skip
    run_tool("supervised_finetune.py", str(CONFIG), *common, "--output_dir", "single", cwd=workspace)
    proc = run_pipeline(workspace, common)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    single, pp = step_logs(workspace / "single"), step_logs(workspace / "pp")
    for step in (1, 2, 3):
        assert abs(pp[step]["loss"] - single[step]["loss"]) <= 1e-5, step
        assert pp[step]["grad_norm"] == pytest.approx(single[step]["grad_norm"], rel=1e-4)
    saved_single = load_safetensors(workspace / "single" / "model.safetensors")
    saved_pp = load_safetensors(workspace / "pp" / "model.safetensors")
    assert sorted(saved_pp) == sorted(saved_single) and "lm_head.weight" not in saved_pp
    for name in saved_single:
        np.testing.assert_allclose(saved_pp[name], saved_single[name], atol=1e-4, rtol=0, err_msg=name)
