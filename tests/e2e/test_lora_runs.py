"""LoRA runs of the real tool: field target names, PEFT-format checkpoints, kill -9 and resume, continuing an adapter."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from paddlemix.utils.io import load_safetensors

pytestmark = pytest.mark.slow
CONFIG = Path(__file__).resolve().parents[2] / "paddlemix" / "config" / "tiny" / "lora_sft_argument.json"
QV = ["--lora_target_modules", '["q_proj", "v_proj"]', "--lora_dropout", "0.1", "--do_eval", "false",
      "--evaluation_strategy", "no", "--max_steps", "6", "--save_steps", "2", "--save_total_limit", "2"]  # fmt: skip
PREFIX = "base_model.model.model.language_model.layers."


def losses(out: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in records if "loss" in r}


def test_killed_q_v_run_resumes_to_the_same_adapter(workspace: Path, run_tool, kill_when) -> None:
    run_tool("supervised_finetune.py", str(CONFIG), *QV, "--output_dir", "straight", cwd=workspace)
    straight = workspace / "straight"
    weights = load_safetensors(straight / "adapter_model.safetensors")
    assert set(weights) == {
        f"{PREFIX}{i}.self_attn.{p}.lora_{m}.weight" for i in range(2) for p in ("q_proj", "v_proj") for m in "AB"
    }
    checkpoint = straight / "checkpoint-6"
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in checkpoint.iterdir()}
    np.testing.assert_array_equal(load_safetensors(checkpoint / "adapter_model.safetensors")[next(iter(weights))],
                                  weights[next(iter(weights))])  # fmt: skip
    # the checkpoint's model state holds the trainable tensors only, not the frozen base
    state_bytes = sum(p.stat().st_size for p in (checkpoint / "model_state").iterdir())
    assert state_bytes < 0.1 * (workspace / "tiny_qwen2_5_vl" / "model.safetensors").stat().st_size

    args = [str(CONFIG), *QV, "--output_dir", "resumed"]
    marker = workspace / "resumed" / "checkpoint-2" / ".complete"
    assert kill_when("supervised_finetune.py", *args, cwd=workspace, marker=marker) == -9
    second = run_tool("supervised_finetune.py", *args, cwd=workspace)
    assert "resuming from" in second.stderr
    assert losses(workspace / "resumed")[6] == pytest.approx(losses(straight)[6], abs=1e-5)
    resumed = load_safetensors(workspace / "resumed" / "adapter_model.safetensors")
    for name, value in weights.items():
        np.testing.assert_allclose(resumed[name], value, atol=1e-6, err_msg=name)


def test_lora_path_continues_the_adapter(workspace: Path, run_tool) -> None:
    """A second run from the first one's adapter with learning rate 0 must end with exactly that adapter."""
    first = ["--max_steps", "2", "--do_eval", "false", "--evaluation_strategy", "no", "--train_type", "use_lora"]
    run_tool("supervised_finetune.py", str(CONFIG), *first, "--output_dir", "first", cwd=workspace)
    adapter = load_safetensors(workspace / "first" / "adapter_model.safetensors")
    assert any(".visual.merger." in k for k in adapter)  # the projector trains fully under use_lora
    run_tool("supervised_finetune.py", str(CONFIG), *first, "--output_dir", "second", "--learning_rate", "0",
             "--lora_path", "first", cwd=workspace)  # fmt: skip
    again = load_safetensors(workspace / "second" / "adapter_model.safetensors")
    assert set(again) == set(adapter)
    for name, value in adapter.items():
        np.testing.assert_array_equal(again[name], value, err_msg=name)


@pytest.mark.multiprocess
def test_two_process_lora_matches_single_process(workspace: Path, shapes_data, run_tool) -> None:
    """Data parallel through train.sh: 2 processes x 2 samples end with the adapter of 1 process x 4 samples."""
    import os
    import subprocess

    from test_data_parallel import REPO, equal_label_data

    data = equal_label_data(workspace, workspace / "tiny_qwen2_5_vl", shapes_data["train"])
    common = [str(CONFIG), "--dataset", json.dumps({"train": [{"name": "chatml_dataset", "data_files": str(data)}]}),
              "--do_eval", "false", "--evaluation_strategy", "no", "--max_steps", "3", "--dataloader_shuffle",
              "false", "--save_steps", "100", "--warmup_ratio", "0", "--lora_target_modules", '["q_proj", "v_proj"]']  # fmt: skip
    run_tool("supervised_finetune.py", *common, "--per_device_train_batch_size", "4", "--output_dir", "single",
             cwd=workspace)  # fmt: skip
    env = {**os.environ, "NPROC": "2", "PYTHON": str(Path(os.sys.executable))}
    proc = subprocess.run(["sh", str(REPO / "paddlemix" / "tools" / "train.sh"), *common,
                           "--per_device_train_batch_size", "2", "--output_dir", "dp"],
                          cwd=workspace, env=env, capture_output=True, text=True, timeout=900)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    single = load_safetensors(workspace / "single" / "adapter_model.safetensors")
    dp = load_safetensors(workspace / "dp" / "adapter_model.safetensors")
    assert set(dp) == set(single)
    for key in single:
        assert np.abs(single[key]).max() > 0, key
        np.testing.assert_allclose(dp[key], single[key], atol=2e-5, err_msg=key)
