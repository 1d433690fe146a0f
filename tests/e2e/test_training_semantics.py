"""Training semantics through the real tool: accumulation equals the big batch, one seed fixes the run, loader
workers work with every batch size, and the counters count what was trained."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from paddlemix.utils.io import load_safetensors

pytestmark = pytest.mark.slow
CONFIG = Path(__file__).resolve().parents[2] / "paddlemix" / "config" / "tiny"
# AdamW's first update is about sign(gradient); a large epsilon makes it proportional to the gradient, so the
# weights after the step show any difference in the gradients, not only in their signs.
LINEAR_ADAM = ["--adam_epsilon", "10", "--learning_rate", "1.0", "--warmup_ratio", "0", "--weight_decay", "0"]
QUIET = ["--do_eval", "false", "--evaluation_strategy", "no", "--save_steps", "100", "--logging_steps", "1"]


def train_log(out: Path) -> dict[int, dict]:
    records = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    return {r["step"]: r for r in records if "loss" in r}


def dataset_arg(path: Path) -> str:
    return json.dumps({"train": [{"name": "chatml_dataset", "data_files": str(path)}]})


@pytest.mark.parametrize(
    "extra",
    [[], ["--mixtoken", "true", "--pack_window", "8", "--max_length", "160", "--loss_chunk_size", "0"]],
    ids=["padded-chunked-loss", "mixtoken-full-logits"],
)
def test_accumulation_equals_the_big_batch(workspace: Path, uneven_answers: Path, run_tool, extra: list[str]) -> None:
    data = uneven_answers
    common = [str(CONFIG / "sft_argument.json"), "--dataset", dataset_arg(data), "--dataloader_shuffle", "false",
              "--max_steps", "2", *QUIET, *LINEAR_ADAM, *extra]  # fmt: skip
    run_tool("supervised_finetune.py", *common, "--per_device_train_batch_size", "2",
             "--gradient_accumulation_steps", "1", "--output_dir", "big", cwd=workspace)  # fmt: skip
    run_tool("supervised_finetune.py", *common, "--per_device_train_batch_size", "1",
             "--gradient_accumulation_steps", "2", "--output_dir", "accumulated", cwd=workspace)  # fmt: skip
    big, accumulated = train_log(workspace / "big"), train_log(workspace / "accumulated")
    for step in (1, 2):
        assert accumulated[step]["loss"] == pytest.approx(big[step]["loss"], rel=1e-5)
        assert accumulated[step]["grad_norm"] == pytest.approx(big[step]["grad_norm"], rel=1e-4)
    a = load_safetensors(workspace / "big" / "model.safetensors")
    b = load_safetensors(workspace / "accumulated" / "model.safetensors")
    base = load_safetensors(workspace / "tiny_qwen2_5_vl" / "model.safetensors")
    name = "model.layers.0.mlp.down_proj.weight"
    assert np.abs(a[name] - base[name]).max() > 1e-4, "the step must move the weights"
    for key in a:
        np.testing.assert_allclose(b[key], a[key], atol=1e-6, err_msg=key)


def test_same_seed_gives_bit_identical_lora_adapters(workspace: Path, run_tool) -> None:
    args = [str(CONFIG / "lora_sft_argument.json"), "--lora_dropout", "0.1", "--max_steps", "3", *QUIET]
    run_tool("supervised_finetune.py", *args, "--output_dir", "first", cwd=workspace)
    run_tool("supervised_finetune.py", *args, "--output_dir", "second", cwd=workspace)
    run_tool("supervised_finetune.py", *args, "--seed", "7", "--output_dir", "other_seed", cwd=workspace)
    files = sorted(p.name for p in (workspace / "first").glob("*.safetensors"))
    assert files, "the run saved no weights"
    differs = False
    for name in files:
        a, b = load_safetensors(workspace / "first" / name), load_safetensors(workspace / "second" / name)
        c = load_safetensors(workspace / "other_seed" / name)
        assert sorted(a) == sorted(b)
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)
            differs |= not np.array_equal(a[key], c[key])
    assert differs, "another seed must give another adapter"


@pytest.mark.parametrize("packing", ["false", "true"], ids=["padded", "mixtoken"])
def test_two_loader_workers_with_batch_one_match_no_workers(workspace: Path, run_tool, packing: str) -> None:
    args = [str(CONFIG / "sft_argument.json"), "--per_device_train_batch_size", "1", "--max_steps", "4",
            "--mixtoken", packing, "--max_length", "160", *QUIET]  # fmt: skip
    run_tool("supervised_finetune.py", *args, "--dataloader_num_workers", "0", "--output_dir", "w0", cwd=workspace)
    run_tool("supervised_finetune.py", *args, "--dataloader_num_workers", "2", "--output_dir", "w2", cwd=workspace)
    w0, w2 = train_log(workspace / "w0"), train_log(workspace / "w2")
    assert sorted(w2) == [1, 2, 3, 4]
    for step in w0:
        assert w2[step]["loss"] == pytest.approx(w0[step]["loss"], rel=1e-6), "workers must give the same stream"
    seen = json.loads((workspace / "w2" / "all_results.json").read_text())["skipped_by_source"]
    summary = json.loads((workspace / "w2" / "train_summary.json").read_text())
    trained = summary["train_samples"]
    assert sum(s["seen"] for s in seen.values()) == trained
    if packing == "false":
        assert trained == 4, "batch 1 x 4 steps trains 4 samples, whatever the workers prefetched"
    else:
        assert trained > 4 and summary["train_rows"] == 4, "4 packed rows hold more than 4 samples"
