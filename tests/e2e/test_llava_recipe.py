"""The LLaVA-from-scratch recipe with the real tools: build from a CLIP tower and an LM, fine-tune two steps with
the `use_lora` preset and MIXToken, merge, reload and answer."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import paddle
import pytest

from paddlemix.auto import AutoModelMIX
from paddlemix.datasets.conversation import Message, Sample
from paddlemix.inference.generation import Generator
from paddlemix.peft.lora import load_adapter
from paddlemix.testing.tiny_llava import build_tiny_causal_lm
from paddlemix.utils.io import load_safetensors

pytestmark = pytest.mark.slow


def build_and_train(tmp_path: Path, clip: Path, language: str, data: Path, run_tool, **keys) -> tuple[Path, str]:
    """Build a LLaVA with the tool from `clip` and a tiny `language` LM, train it 2 steps with `keys`; return the
    LLaVA folder and the training log (stderr)."""
    lm = build_tiny_causal_lm(tmp_path / f"tiny_{language}", language)
    llava = tmp_path / "llava"
    run_tool("build_llava.py", "--vision_model", str(clip), "--language_model", str(lm),
             "--output_dir", str(llava), cwd=tmp_path)  # fmt: skip
    args = {
        "model_name_or_path": str(llava),
        "dataset": {"train": [{"name": "chatml_dataset", "data_files": str(data)}]},
        "output_dir": str(tmp_path / "out"),
        "max_steps": 2,
        "per_device_train_batch_size": 2,
        "learning_rate": 0.01,
        "device": "cpu",
        "report_to": "none",
        **keys,
    }
    (tmp_path / "args.json").write_text(json.dumps(args))
    return llava, run_tool("supervised_finetune.py", str(tmp_path / "args.json"), cwd=tmp_path).stderr


@pytest.mark.parametrize("language", ["qwen2", "llama"])
def test_build_finetune_merge_reload(tmp_path: Path, language, tiny_clip_dir, shapes_data, run_tool) -> None:
    keys = {"train_type": "use_lora", "lora_rank": 4, "lora_alpha": 8, "mixtoken": True, "max_length": 256}
    llava, log = build_and_train(tmp_path, tiny_clip_dir, language, shapes_data["train"], run_tool, **keys)
    assert "frozen groups ['vision']" in log
    out = tmp_path / "out"
    adapter = load_safetensors(out / "adapter_model.safetensors")
    # PEFT format: use_lora trains the projector fully (PEFT's modules_to_save), the tower not at all
    assert any(k.startswith("base_model.model.model.multi_modal_projector.") for k in adapter)
    assert not any(k.startswith("base_model.model.model.vision_tower.") for k in adapter)
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["modules_to_save"] == ["model.multi_modal_projector"]

    run_tool("merge_lora_params.py", "--lora_path", str(out), "--merge_model_path", str(tmp_path / "merged"),
             cwd=tmp_path)  # fmt: skip
    base_hf = load_safetensors(llava / "model.safetensors")
    merged_hf = load_safetensors(tmp_path / "merged" / "model.safetensors")
    assert set(merged_hf) == set(base_hf)
    changed = {k for k in base_hf if not np.array_equal(base_hf[k], merged_hf[k])}
    assert any(k.startswith("multi_modal_projector.") for k in changed)
    assert any(k.startswith("language_model.") for k in changed)
    assert not any(k.startswith("vision_tower.") for k in changed)

    generator = Generator.from_pretrained(tmp_path / "merged")
    record = json.loads(shapes_data["eval"].read_text().splitlines()[0])
    image = str(shapes_data["eval"].parent / record["images"][0])
    sample = Sample((Message("user", record["messages"][0]["content"]),), (image,))
    inputs = generator.encoder.encode_prompt(sample, generator.template)
    tensors = {k: paddle.to_tensor(v[None] if k == "input_ids" else v) for k, v in inputs.items()}
    with paddle.no_grad():
        expected = load_adapter(AutoModelMIX.from_pretrained(llava), out)(**tensors).logits
        merged = generator.model(**tensors).logits
    assert float((merged - expected).abs().max()) <= 1e-5
    assert isinstance(generator.answer("What color is it?", [image], max_new_tokens=4), str)


def test_freeze_vision_trains_projector_and_llama(tmp_path: Path, tiny_clip_dir, shapes_data, run_tool) -> None:
    """The recipe's full fine-tuning stage on a Llama LLaVA: the saved model reloads, only the tower is unchanged."""
    llava, _ = build_and_train(
        tmp_path, tiny_clip_dir, "llama", shapes_data["train"], run_tool, train_type="freeze_vision"
    )
    base = load_safetensors(llava / "model.safetensors")
    trained = load_safetensors(tmp_path / "out" / "model.safetensors")
    assert set(trained) == set(base)
    changed = {k.split(".")[0] for k in base if not np.array_equal(base[k], trained[k])}
    assert changed == {"multi_modal_projector", "language_model"}
    AutoModelMIX.from_pretrained(tmp_path / "out")
