"""Tensor parallel degree 2 in 2 CPU processes through train.sh against one process on the same global batch: full
SFT and LoRA train the same steps, each rank holds half of every split layer, and what is saved is the one-process
layout (loads here in one process, in transformers and in PEFT).

One run of each kind serves every assertion (CI time). The optimizer is Adam with a large epsilon (an SGD-like step):
plain Adam divides each gradient by its own magnitude, so float rounding in gradients near zero (the split matmuls sum
in another order) would become full-size updates and hide what the test checks.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import paddle
import pytest

from paddlemix.auto import AutoModelMIX
from paddlemix.peft.lora import load_adapter
from paddlemix.utils.io import load_safetensors

pytestmark = [pytest.mark.slow, pytest.mark.multiprocess]
REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "paddlemix" / "config" / "tiny"
TOOLS = REPO / "paddlemix" / "tools"
COMMON = ["--do_eval", "false", "--evaluation_strategy", "no", "--max_steps", "3", "--dataloader_shuffle", "false",
          "--save_steps", "100", "--learning_rate", "1.0", "--adam_epsilon", "10", "--weight_decay", "0",
          "--warmup_ratio", "0", "--per_device_train_batch_size", "4"]  # fmt: skip
RANK_LINE = re.compile(r"tensor parallel rank (\d)/2: ([\d,]+) parameters on this rank \(([\d,]+) trainable\), "
                       r"split layers ([\d,]+) \(([\d,]+) trainable\)")  # fmt: skip


def train(workspace: Path, config: str, out: str, processes: int, *extra: str) -> None:
    data = json.dumps({"train": [{"name": "chatml_dataset", "data_files": "shapes/train.jsonl"}]})
    args = [str(TINY / config), "--dataset", data, *COMMON, "--output_dir", out, *extra]
    if processes == 1:
        command = [sys.executable, str(TOOLS / "supervised_finetune.py"), *args]
        env = dict(os.environ)
    else:
        command = ["sh", str(TOOLS / "train.sh"), *args, "--tensor_parallel_degree", "2"]
        env = {**os.environ, "NPROC": "2", "PYTHON": sys.executable}
    proc = subprocess.run(command, cwd=workspace, env=env, capture_output=True, text=True, timeout=900)
    logs = sorted((workspace / out / "launch_logs").glob("workerlog.*"))
    detail = "\n".join(p.read_text()[-3000:] for p in logs)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:] + detail


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, shapes_data: dict[str, Path]) -> Path:
    workspace = tmp_path_factory.mktemp("tp")
    (workspace / "tiny_qwen2_5_vl").symlink_to(tiny_model_dir)
    (workspace / "shapes").symlink_to(shapes_data["train"].parent)
    for config, name in (("sft_argument.json", "sft"), ("lora_sft_argument.json", "lora")):
        extra = ("--save_steps", "2") if name == "lora" else ()  # a checkpoint to resume from (see below)
        train(workspace, config, f"{name}_single", 1, *extra)
        train(workspace, config, f"{name}_tp", 2, *extra)
    # the TP LoRA run as if stopped after its step-2 checkpoint, then started again: it resumes there
    shutil.copytree(workspace / "lora_tp", workspace / "lora_resumed", symlinks=True)
    for name in ("adapter_model.safetensors", "train_log.jsonl"):
        (workspace / "lora_resumed" / name).unlink()
    train(workspace, "lora_sft_argument.json", "lora_resumed", 2, "--save_steps", "2")
    return workspace


def logged(folder: Path, key: str = "loss") -> list[float]:
    records = [json.loads(line) for line in (folder / "train_log.jsonl").read_text().splitlines()]
    return [r[key] for r in records if "loss" in r]


def rank_counts(folder: Path) -> dict[int, tuple[int, ...]]:
    """Per rank: (parameters, trainable, split-layer parameters, split-layer trainable) from its log line."""
    out = {}
    for log in (folder / "launch_logs").glob("workerlog.*"):
        match = RANK_LINE.search(log.read_text())
        assert match, f"{log} has no tensor-parallel rank line"
        out[int(match[1])] = tuple(int(g.replace(",", "")) for g in match.groups()[1:])
    return out


SPLIT = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "embed_tokens", "lm_head")


@pytest.mark.parametrize("kind", ["sft", "lora"])
def test_tensor_parallel_trains_as_one_process(runs: Path, kind: str) -> None:
    single, tp = logged(runs / f"{kind}_single"), logged(runs / f"{kind}_tp")
    assert len(single) == 3 and single[0] != single[-1]
    np.testing.assert_allclose(tp, single, atol=1e-5, rtol=0)
    # the logged norm is the global one: split slices summed over the tensor group, replicated tensors once
    np.testing.assert_allclose(logged(runs / f"{kind}_tp", "grad_norm"), logged(runs / f"{kind}_single", "grad_norm"),
                               rtol=1e-4, atol=0)  # fmt: skip
    weights = "model.safetensors" if kind == "sft" else "adapter_model.safetensors"
    a, b = load_safetensors(runs / f"{kind}_single" / weights), load_safetensors(runs / f"{kind}_tp" / weights)
    assert sorted(a) == sorted(b), "the TP run writes the one-process layout"
    for key in a:
        np.testing.assert_allclose(b[key], a[key], atol=1e-4, rtol=0, err_msg=key)
    before = load_safetensors(runs / "tiny_qwen2_5_vl" / "model.safetensors") if kind == "sft" else {}
    moved = max(np.abs(a[k] - before.get(k, 0.0)).max() for k in a)
    assert moved > 1e-2, "the weights must move well beyond the tolerance"


def test_tensor_parallel_lora_resumes_exactly(runs: Path) -> None:
    """Each rank reads its own slices of the split adapter matrices back from the checkpoint."""
    assert "resuming from" in (runs / "lora_resumed" / "launch_logs" / "workerlog.0").read_text()
    assert [json.loads(line)["step"] for line in (runs / "lora_resumed" / "train_log.jsonl").read_text().splitlines()
            if '"loss"' in line] == [3]  # fmt: skip
    resumed = load_safetensors(runs / "lora_resumed" / "adapter_model.safetensors")
    whole = load_safetensors(runs / "lora_tp" / "adapter_model.safetensors")
    for key in whole:
        np.testing.assert_allclose(resumed[key], whole[key], atol=1e-6, rtol=0, err_msg=key)


def test_each_rank_holds_half_of_the_split_layers(runs: Path) -> None:
    base = load_safetensors(runs / "tiny_qwen2_5_vl" / "model.safetensors")
    whole = sum(v.size for k, v in base.items() if not k.startswith("visual.") and k.rsplit(".", 2)[-2] in SPLIT)
    total = sum(v.size for v in base.values())
    sft = rank_counts(runs / "sft_tp")
    assert sorted(sft) == [0, 1]
    for parameters, trainable, split, split_trainable in sft.values():
        assert split == split_trainable == whole // 2
        assert parameters == trainable == total - whole // 2
    lora = rank_counts(runs / "lora_tp")
    adapter = load_safetensors(runs / "lora_single" / "adapter_model.safetensors")
    # column-parallel q/k/v/gate/up keep B halved, row-parallel o/down keep A halved; the other matrix is whole
    halved = sum(
        v.size for k, v in adapter.items() if ("lora_B" in k) != any(f".{r}." in k for r in ("o_proj", "down_proj"))
    )
    for _parameters, _trainable, split, split_trainable in lora.values():
        assert split_trainable == sum(v.size for v in adapter.values()) - halved // 2
        assert split - split_trainable == whole // 2


@pytest.fixture(scope="module")
def inputs(runs: Path) -> dict[str, np.ndarray]:
    ids = np.arange(3, 27, dtype="int64")[None]  # [1, 24]
    return {"input_ids": ids, "attention_mask": np.ones_like(ids)}


def paddle_logits(model, inputs: dict[str, np.ndarray]) -> np.ndarray:
    model.eval()
    with paddle.no_grad():
        return model(**{k: paddle.to_tensor(v) for k, v in inputs.items()}).logits.numpy()


def test_tensor_parallel_save_reloads_in_one_process(runs: Path, inputs) -> None:
    saved = AutoModelMIX.from_pretrained(runs / "sft_tp")
    single = AutoModelMIX.from_pretrained(runs / "sft_single")
    assert np.abs(paddle_logits(saved, inputs) - paddle_logits(single, inputs)).max() < 1e-4
    adapted = load_adapter(AutoModelMIX.from_pretrained(runs / "tiny_qwen2_5_vl"), runs / "lora_tp")
    reference = load_adapter(AutoModelMIX.from_pretrained(runs / "tiny_qwen2_5_vl"), runs / "lora_single")
    assert np.abs(paddle_logits(adapted, inputs) - paddle_logits(reference, inputs)).max() < 1e-4


def test_tensor_parallel_save_loads_in_transformers_and_peft(runs: Path, inputs, tmp_path: Path) -> None:
    sys.path.insert(0, str(REPO / "tests" / "parity"))
    from hf_parity import REF_PYTHON, peft_reference, reference

    if not REF_PYTHON:
        pytest.skip("PADDLEMIX_REF_PYTHON (a Python with torch + transformers 4.57.1 + peft) is not set")
    np.savez(tmp_path / "inputs.npz", **inputs)
    hf = reference(runs / "sft_tp", tmp_path, inputs=str(tmp_path / "inputs.npz"))  # asserts no missing keys
    ours = paddle_logits(AutoModelMIX.from_pretrained(runs / "sft_tp"), inputs)
    assert np.abs(hf["logits"] - ours).max() < 1e-4
    peft = peft_reference("load", runs / "tiny_qwen2_5_vl", runs / "lora_tp", inputs, tmp_path)
    assert list(peft["missing"]) == [] and list(peft["unexpected"]) == []
    adapted = load_adapter(AutoModelMIX.from_pretrained(runs / "tiny_qwen2_5_vl"), runs / "lora_tp")
    assert np.abs(peft["logits"] - paddle_logits(adapted, inputs)).max() < 1e-4
