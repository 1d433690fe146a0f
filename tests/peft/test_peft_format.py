"""The PEFT adapter files: config fields PEFT reads, refused PEFT features, and the pure merge."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from paddlemix.peft.peft_format import PeftAdapter, merge_lora, read_adapter, write_adapter
from paddlemix.utils.errors import UserError
from paddlemix.utils.io import load_safetensors

M = "model.language_model.layers.0.self_attn.q_proj"


def adapter(rng: np.random.Generator, **kwargs) -> PeftAdapter:
    return PeftAdapter(
        {M: rng.normal(size=(2, 6)).astype("float32")},
        {M: rng.normal(size=(4, 2)).astype("float32")},
        {"model.multi_modal_projector.linear_1.weight": rng.normal(size=(3, 5)).astype("float32")},
        r=2, lora_alpha=8, target_modules="(q_proj)", modules_to_save=["model.multi_modal_projector"], **kwargs,
    )  # fmt: skip


def test_files_carry_what_peft_reads(tmp_path: Path) -> None:
    original = adapter(np.random.default_rng(0), base_model_name_or_path="/models/base")
    write_adapter(original, tmp_path)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["task_type"] == "CAUSAL_LM" and config["bias"] == "none"
    assert config["fan_in_fan_out"] is False and config["inference_mode"] is True and config["use_rslora"] is False
    assert (config["r"], config["lora_alpha"], config["base_model_name_or_path"]) == (2, 8, "/models/base")
    assert set(load_safetensors(tmp_path / "adapter_model.safetensors")) == {
        f"base_model.model.{M}.lora_A.weight",
        f"base_model.model.{M}.lora_B.weight",
        "base_model.model.model.multi_modal_projector.linear_1.weight",
    }
    again = read_adapter(tmp_path)
    np.testing.assert_array_equal(again.lora_B[M], original.lora_B[M])
    assert again.modules_to_save == ["model.multi_modal_projector"] and again.scaling == 4.0


@pytest.mark.parametrize("key, value", [("use_dora", True), ("rank_pattern", {"q_proj": 8}), ("bias", "all")])
def test_unsupported_peft_features_are_refused(tmp_path: Path, key: str, value) -> None:
    write_adapter(adapter(np.random.default_rng(0)), tmp_path)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    (tmp_path / "adapter_config.json").write_text(json.dumps({**config, key: value}))
    with pytest.raises(UserError, match=key):
        read_adapter(tmp_path)


def test_folder_without_adapter_is_a_user_error(tmp_path: Path) -> None:
    (tmp_path / "lora_config.json").write_text("{}")
    with pytest.raises(UserError, match="adapter_config.json, adapter_model.safetensors missing"):
        read_adapter(tmp_path)


def test_pure_merge_is_w_plus_scaled_b_a(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    a = adapter(rng, use_rslora=True)
    base = {M + ".weight": rng.normal(size=(4, 6)).astype("float32"),
            "model.multi_modal_projector.linear_1.weight": np.zeros((3, 5), "float32")}  # fmt: skip
    merged = merge_lora(base, a)
    expected = base[M + ".weight"] + 8 / np.sqrt(2) * a.lora_B[M] @ a.lora_A[M]
    np.testing.assert_allclose(merged[M + ".weight"], expected, rtol=1e-6)
    np.testing.assert_array_equal(merged["model.multi_modal_projector.linear_1.weight"],
                                  a.saved["model.multi_modal_projector.linear_1.weight"])  # fmt: skip
    with pytest.raises(KeyError):
        merge_lora({M + ".weight": base[M + ".weight"]}, a)
