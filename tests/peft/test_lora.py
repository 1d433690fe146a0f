from __future__ import annotations

from pathlib import Path

import numpy as np
import paddle
import pytest

from paddlemix.auto import AutoModelMIX
from paddlemix.models import adapter_for
from paddlemix.peft.lora import (
    adapter_state_dict,
    apply_lora,
    load_adapter,
    merge_adapter_folder,
    merge_lora,
    save_adapter,
)
from paddlemix.testing.lora import perturb_lora as perturb
from paddlemix.utils.errors import UserError
from paddlemix.utils.io import to_numpy


def batch(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {"input_ids": paddle.to_tensor(rng.integers(0, 400, (2, 12)))}


def logits(model, inputs) -> np.ndarray:
    with paddle.no_grad():
        return model(**inputs).logits.numpy()


@pytest.fixture()
def lora_model(tiny_model_dir: Path):
    model = AutoModelMIX.from_pretrained(tiny_model_dir)
    return apply_lora(model, adapter_for(tiny_model_dir).lora_targets, rank=4, alpha=8)


def test_fresh_adapter_is_identity_and_only_lora_trains(tiny_model_dir: Path, lora_model) -> None:
    base = AutoModelMIX.from_pretrained(tiny_model_dir)
    np.testing.assert_allclose(logits(lora_model, batch()), logits(base, batch()), atol=1e-6)
    trainable = [n for n, p in lora_model.model.named_parameters() if not p.stop_gradient]
    assert trainable and all(".lora_A" in n or ".lora_B" in n for n in trainable)
    assert len(trainable) == 2 * 2 * 4  # 2 layers x (qkv, o, up_gate, down) x (A, B)


def test_pure_merge_equals_adapter_forward(tiny_model_dir: Path, lora_model) -> None:
    perturb(lora_model)
    expected = logits(lora_model, batch())
    base_model = AutoModelMIX.from_pretrained(tiny_model_dir)
    base_state = {k: to_numpy(v) for k, v in base_model.state_dict().items()}
    merged = merge_lora(base_state, adapter_state_dict(lora_model), scaling=8 / 4)
    assert set(merged) == set(base_state)
    base_model.set_state_dict({k: paddle.to_tensor(v) for k, v in merged.items()})
    assert (
        np.abs(logits(base_model, batch()) - logits(AutoModelMIX.from_pretrained(tiny_model_dir), batch())).max()
        > 1e-3
    )
    np.testing.assert_allclose(logits(base_model, batch()), expected, atol=1e-5)


def test_save_load_and_merge_folder(tiny_model_dir: Path, lora_model, tmp_path: Path) -> None:
    perturb(lora_model)
    expected = logits(lora_model, batch(3))
    save_adapter(lora_model, tmp_path)
    reloaded = load_adapter(AutoModelMIX.from_pretrained(tiny_model_dir), tmp_path)
    np.testing.assert_allclose(logits(reloaded, batch(3)), expected, atol=1e-6)
    merged_dir = merge_adapter_folder(tiny_model_dir, tmp_path, tmp_path / "merged")
    assert (merged_dir / "model.safetensors").is_file() and (merged_dir / "preprocessor_config.json").is_file()
    np.testing.assert_allclose(logits(AutoModelMIX.from_pretrained(merged_dir), batch(3)), expected, atol=1e-5)


def test_target_that_matches_nothing_is_a_user_error(tiny_model_dir: Path) -> None:
    model = AutoModelMIX.from_pretrained(tiny_model_dir)
    with pytest.raises(UserError, match="matches no layer"):
        apply_lora(model, [r".*\.q_proj"], rank=4, alpha=8)


def test_merge_rejects_unknown_tensor() -> None:
    with pytest.raises(KeyError):
        merge_lora({"a.weight": np.zeros((2, 2))}, {"b.weight": np.zeros((2, 2))}, 1.0)
