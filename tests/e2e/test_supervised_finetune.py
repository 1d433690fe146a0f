"""The real entry points, run as a user runs them, on the tiny model and synthetic shapes data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import paddle
import pytest

from paddlemix.auto import AutoModelMIX
from paddlemix.peft.lora import load_adapter
from paddlemix.testing.tiny_paddleocr_vl import build_tiny_paddleocr_vl
from paddlemix.utils.io import load_safetensors

pytestmark = pytest.mark.slow
CONFIG = Path(__file__).resolve().parents[2] / "paddlemix" / "config" / "tiny"
MODEL_FILES = {
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.json",
    "merges.txt",
    "special_tokens_map.json",
    "chat_template.json",
    "preprocessor_config.json",
}
FAMILIES = ["qwen2_vl", "qwen2_5_vl", "qwen3_vl", "llava", "paddleocr_vl"]
# A vision-tower tensor per family, to check that "freeze_vision" kept it.
VISION_TENSOR = {"qwen2_vl": "patch_embed.proj.weight", "qwen2_5_vl": "patch_embed.proj.weight", "qwen3_vl": "patch_embed.proj.weight",
                 "llava": "embeddings.patch_embedding.weight", "paddleocr_vl": "embeddings.patch_embedding.weight"}  # fmt: skip
RUN_FILES = {"run_args.json", "all_results.json", "train_log.jsonl", "train_summary.json", "loss_curve.png"}


def log_records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]


def losses(out: Path) -> list[float]:
    return [r["loss"] for r in log_records(out) if "loss" in r]


def tensor(weights: dict[str, np.ndarray], suffix: str) -> np.ndarray:
    """The one tensor whose checkpoint name ends with `suffix` (the names' prefixes differ per family)."""
    (name,) = [n for n in weights if n.endswith(suffix)]
    return weights[name]


def model_files(model_dir: Path) -> set[str]:
    """The files a saved model must have: the standard set, plus the processor and video processor configs and the
    chat template files (chat_template.json, chat_template.jinja) where the base has them."""
    optional = ("video_preprocessor_config.json", "processor_config.json", "chat_template.json", "chat_template.jinja")
    return (MODEL_FILES - {"chat_template.json"}) | {name for name in optional if (model_dir / name).is_file()}


@pytest.mark.parametrize("tiny_family", FAMILIES, indirect=True)
def test_full_sft_writes_hf_model_that_learns(workspace: Path, run_tool, tiny_family: str) -> None:
    proc = run_tool(
        "supervised_finetune.py",
        str(CONFIG / "sft_argument.json"),
        "--model_name_or_path",
        tiny_family,
        "--max_steps",
        "12",
        "--freeze_vision",
        "true",
        "--benchmark",
        "true",
        cwd=workspace,
    )
    out = workspace / "checkpoints" / "tiny_sft"
    files = {p.name for p in out.iterdir() if not p.name.startswith(".")}
    assert files == model_files(workspace / tiny_family) | RUN_FILES | {"checkpoint-12"}
    assert "trainable" in proc.stderr and "frozen" in proc.stderr
    curve = losses(out)
    assert len(curve) == 12 and all(np.isfinite(curve))
    assert np.mean(curve[-3:]) < np.mean(curve[:3])
    results = json.loads((out / "all_results.json").read_text())
    for key in ("train_samples_per_second", "tokens_per_second", "image_tokens_per_second", "peak_memory_mb"):
        assert results[key] > 0, key
    assert "eval_loss" in results
    base = load_safetensors(workspace / tiny_family / "model.safetensors")
    trained = load_safetensors(out / "model.safetensors")
    assert set(trained) == set(base)
    vision = VISION_TENSOR[tiny_family.removeprefix("tiny_")]
    np.testing.assert_array_equal(tensor(trained, vision), tensor(base, vision))
    q_proj = "model.layers.0.self_attn.q_proj.weight"  # the language model's, not the vision tower's
    assert not np.array_equal(tensor(trained, q_proj), tensor(base, q_proj))
    AutoModelMIX.from_pretrained(out)
    assert json.loads((out / "run_args.json").read_text())["max_steps"] == 12


def test_full_save_and_merge_carry_base_tensors_the_model_does_not_hold(workspace: Path, run_tool) -> None:
    """SigLIP's pooling head of PaddleOCR-VL releases (`visual.vision_model.head.*`) is in neither paddleformers' nor
    transformers' model: a full fine-tune's save and a LoRA merge still hold every tensor of it, bit-equal to the
    base (vLLM checks a checkpoint against the released layout, PaddleFormers #3680), and both load here."""
    build_tiny_paddleocr_vl(workspace / "tiny_ocr_head", pooling_head=True)
    base = load_safetensors(workspace / "tiny_ocr_head" / "model.safetensors")
    head = {name: value for name, value in base.items() if name.startswith("visual.vision_model.head.")}
    assert len(head) == 11
    model = ["--model_name_or_path", "tiny_ocr_head", "--max_steps", "2"]
    full = run_tool("supervised_finetune.py", str(CONFIG / "sft_argument.json"), *model, cwd=workspace)
    assert "carried 11 tensor(s)" in full.stderr
    run_tool("supervised_finetune.py", str(CONFIG / "lora_sft_argument.json"), *model, cwd=workspace)
    lora = workspace / "checkpoints" / "tiny_lora"
    run_tool("merge_lora_params.py", "--lora_path", str(lora), "--merge_model_path", str(workspace / "merged"),
             cwd=workspace)  # fmt: skip
    for folder in (workspace / "checkpoints" / "tiny_sft", workspace / "merged"):
        saved = load_safetensors(folder / "model.safetensors")
        assert set(saved) == set(base), folder.name
        for name, value in head.items():
            assert saved[name].dtype == value.dtype and saved[name].tobytes() == value.tobytes(), name
        AutoModelMIX.from_pretrained(folder)


def test_rerun_resumes_from_last_checkpoint_unless_overwrite(workspace: Path, run_tool) -> None:
    args = [str(CONFIG / "sft_argument.json"), "--save_steps", "2", "--eval_steps", "100"]
    run_tool("supervised_finetune.py", *args, "--max_steps", "4", cwd=workspace)
    out = workspace / "checkpoints" / "tiny_sft"
    assert (out / "checkpoint-4" / ".complete").is_file()
    second = run_tool("supervised_finetune.py", *args, "--max_steps", "6", cwd=workspace)
    assert "resuming from" in second.stderr and "checkpoint-4" in second.stderr
    steps = [r["step"] for r in log_records(out) if "loss" in r]
    assert steps == [1, 2, 3, 4, 5, 6]
    third = run_tool(
        "supervised_finetune.py", *args, "--max_steps", "2", "--overwrite_output_dir", "true", cwd=workspace
    )
    assert "resuming from" not in third.stderr


@pytest.mark.parametrize("tiny_family", FAMILIES, indirect=True)
def test_lora_run_then_merge_tool(workspace: Path, run_tool, tiny_family: str) -> None:
    run_tool(
        "supervised_finetune.py", str(CONFIG / "lora_sft_argument.json"), "--model_name_or_path", tiny_family,
        cwd=workspace,
    )  # fmt: skip
    out = workspace / "checkpoints" / "tiny_lora"
    files = {p.name for p in out.iterdir() if not p.name.startswith(".")}
    assert {
        "adapter_model.safetensors",
        "adapter_config.json",
        "run_args.json",
        "tokenizer.json",
        "preprocessor_config.json",
    } <= files
    assert files & {"chat_template.json", "chat_template.jinja"}
    assert "model.safetensors" not in files and "config.json" not in files
    run_tool(
        "merge_lora_params.py", "--lora_path", str(out), "--merge_model_path", str(workspace / "merged"), cwd=workspace
    )
    merged_files = {p.name for p in (workspace / "merged").iterdir()}
    assert model_files(workspace / tiny_family) <= merged_files
    inputs = {"input_ids": paddle.to_tensor(np.random.default_rng(0).integers(0, 500, (1, 16)))}
    with paddle.no_grad():
        expected = load_adapter(AutoModelMIX.from_pretrained(workspace / tiny_family), out)(**inputs).logits
        merged = AutoModelMIX.from_pretrained(workspace / "merged")(**inputs).logits
        base = AutoModelMIX.from_pretrained(workspace / tiny_family)(**inputs).logits
    assert float((expected - base).abs().max()) > 1e-4
    assert float((merged - expected).abs().max()) <= 1e-5


@pytest.mark.parametrize(
    "override, message",
    [
        (["--lora_rnak", "4"], 'command line: unknown option "--lora_rnak". Did you mean "--lora_rank"?'),
        (["--max_steps", "many"], 'command line: key "max_steps" must be an integer'),
        (["--device", "gpu"], 'device "gpu" is not usable'),
        (["--fp16_opt_level", "O2"], '"fp16_opt_level": "O2" needs'),
    ],
)
def test_user_mistakes_exit_2_with_one_paragraph(workspace: Path, run_tool, override, message) -> None:
    proc = run_tool("supervised_finetune.py", str(CONFIG / "sft_argument.json"), *override, cwd=workspace, check=False)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
