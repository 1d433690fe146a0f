"""MIXToken through the real tool: packed rows, fill in the logs, and a killed run that resumes to the same end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from paddlemix.utils.io import load_safetensors

pytestmark = pytest.mark.slow
CONFIG = Path(__file__).resolve().parents[2] / "paddlemix" / "config" / "tiny" / "sft_argument.json"
PACKING = ["--mixtoken", "true", "--pack_window", "16", "--max_length", "160", "--per_device_train_batch_size",
           "2", "--max_steps", "8", "--save_steps", "2", "--save_total_limit", "2", "--do_eval", "false",
           "--evaluation_strategy", "no"]  # fmt: skip


def train_logs(out: Path) -> dict[int, dict]:
    records = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    return {r["step"]: r for r in records if "loss" in r}


@pytest.mark.parametrize(
    "tiny_family, packing",
    [("qwen2_5_vl", True), ("qwen2_5_vl", False), ("qwen2_vl", True), ("qwen3_vl", True), ("llava", True)],
    ids=["mixtoken", "padded", "qwen2_vl-mixtoken", "qwen3_vl-mixtoken", "llava-mixtoken"],
    indirect=["tiny_family"],
)
def test_killed_run_resumes_to_the_same_weights(
    workspace: Path, run_tool, kill_when, tiny_family: str, packing: bool
) -> None:
    extra = PACKING if packing else PACKING[PACKING.index("--per_device_train_batch_size") :]
    extra = [*extra, "--model_name_or_path", tiny_family]
    run_tool("supervised_finetune.py", str(CONFIG), *extra, "--output_dir", "straight", "--benchmark", "true",
             cwd=workspace)  # fmt: skip
    logs = train_logs(workspace / "straight")
    assert sorted(logs) == list(range(1, 9))
    if packing:
        assert all(0.5 < r["fill"] <= 1.0 for r in logs.values())
        assert json.loads((workspace / "straight" / "all_results.json").read_text())["fill"] > 0.5

    args = [str(CONFIG), *extra, "--output_dir", "resumed"]
    code = kill_when("supervised_finetune.py", *args, cwd=workspace,
                     marker=workspace / "resumed" / "checkpoint-2" / ".complete")  # fmt: skip
    assert code == -9, "the run ended before it could be killed"
    second = run_tool("supervised_finetune.py", *args, cwd=workspace)
    assert "resuming from" in second.stderr
    resumed = train_logs(workspace / "resumed")
    assert resumed[8]["loss"] == pytest.approx(logs[8]["loss"], abs=1e-5)
    a = load_safetensors(workspace / "straight" / "model.safetensors")
    b = load_safetensors(workspace / "resumed" / "model.safetensors")
    for name in a:
        np.testing.assert_allclose(a[name], b[name], atol=1e-6, err_msg=name)


def test_killed_lora_mixtoken_run_resumes_bit_identical(workspace: Path, run_tool, kill_when) -> None:
    """LoRA with dropout on packed rows: one seed fixes initialisation, pack order and dropout masks, and the
    resumed run restores the pack stream and the random generators, so every saved tensor is bit-identical."""
    args = [str(CONFIG.parent / "lora_sft_argument.json"), *PACKING, "--lora_dropout", "0.1"]
    run_tool("supervised_finetune.py", *args, "--output_dir", "straight", cwd=workspace)
    resumed = [*args, "--output_dir", "resumed"]
    code = kill_when("supervised_finetune.py", *resumed, cwd=workspace,
                     marker=workspace / "resumed" / "checkpoint-2" / ".complete")  # fmt: skip
    assert code == -9, "the run ended before it could be killed"
    assert "resuming from" in run_tool("supervised_finetune.py", *resumed, cwd=workspace).stderr
    assert train_logs(workspace / "resumed")[8]["loss"] == train_logs(workspace / "straight")[8]["loss"]
    files = sorted(p.name for p in (workspace / "straight").glob("*.safetensors"))
    assert files == sorted(p.name for p in (workspace / "resumed").glob("*.safetensors")) and files
    for name in files:
        a, b = load_safetensors(workspace / "straight" / name), load_safetensors(workspace / "resumed" / name)
        assert sorted(a) == sorted(b)
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)


@pytest.mark.parametrize("save", ["epoch", "no"])
def test_epoch_strategies_act_at_each_planned_epoch(workspace: Path, run_tool, save: str) -> None:
    """MIXToken turns num_train_epochs into max_steps; "epoch" evaluation and saving still happen once per epoch."""
    dataset = {"train": [{"name": "chatml_dataset", "data_files": "shapes/train.jsonl"}],
               "eval": [{"name": "chatml_dataset", "data_files": "shapes/eval.jsonl"}]}  # fmt: skip
    proc = run_tool("supervised_finetune.py", str(CONFIG), "--dataset", json.dumps(dataset), "--mixtoken", "true",
                    "--max_length", "160", "--max_steps", "-1", "--num_train_epochs", "2",
                    "--evaluation_strategy", "epoch", "--save_strategy", save, "--save_total_limit", "5",
                    "--eval_generation", "true", "--eval_generation_samples", "2", "--output_dir", "out",
                    cwd=workspace)  # fmt: skip
    assert "9223372036854775807" not in proc.stderr
    assert 'evaluation_strategy "epoch" = "steps"' in proc.stderr
    max_steps = int(proc.stderr.split("max_steps ")[1].split()[0])
    per_epoch = int(proc.stderr.split("with eval_steps ")[1].split()[0].rstrip(","))
    assert max_steps == 2 * per_epoch > 2
    records = [json.loads(line) for line in (workspace / "out" / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "eval_loss" in r] == [per_epoch, max_steps]
    last = {k: v for r in records if r["step"] == max_steps for k, v in r.items() if k.startswith("eval_")}
    results = json.loads((workspace / "out" / "all_results.json").read_text())
    assert len(last) > 4 and {k: results[k] for k in last} == last  # the final evaluation's loss and scores
    saved = sorted(int(p.name.split("-")[1]) for p in (workspace / "out").glob("checkpoint-*"))
    assert saved == ([per_epoch, max_steps] if save == "epoch" else [])
