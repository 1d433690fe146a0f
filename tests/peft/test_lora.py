"""LoRA on the tiny models: exact slices of fused layers, identity when fresh, merge, PEFT-format save/load, seeding."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import paddle
import pytest

from paddlemix.auto import AutoModelMIX
from paddlemix.models import adapter_for
from paddlemix.models.hf_layout import to_hf_layout
from paddlemix.peft.lora import (
    adapter_state_dict,
    apply_lora,
    fold_adapter,
    load_adapter,
    lora_modules,
    save_adapter,
)
from paddlemix.peft.merge import merge_adapter
from paddlemix.peft.peft_format import read_adapter
from paddlemix.testing.lora import perturb_lora as perturb
from paddlemix.utils.errors import UserError
from paddlemix.utils.io import load_safetensors, to_numpy

LAYER0 = "model.language_model.layers.0"


def batch(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {"input_ids": paddle.to_tensor(rng.integers(0, 400, (2, 12)))}


def logits(model, inputs) -> np.ndarray:
    with paddle.no_grad():
        return model(**inputs).logits.numpy()


def lora_model(model_dir: Path, targets=None, **kwargs):
    modules = lora_modules(model_dir, adapter_for(model_dir), targets)
    return apply_lora(AutoModelMIX.from_pretrained(model_dir), modules, rank=4, alpha=8, **kwargs)


def hf_tensors(model) -> dict[str, np.ndarray]:
    """The model's weights split into Hugging Face's separate q/k/v and gate/up tensors (torch layout)."""
    state = {k: to_numpy(v) for k, v in model.state_dict().items() if "lora_" not in k}
    return to_hf_layout(state, model.config, lambda name: name)


@pytest.fixture(scope="module")
def base_logits(tiny_model_dir: Path) -> np.ndarray:
    return logits(AutoModelMIX.from_pretrained(tiny_model_dir), batch())


def test_fresh_adapter_is_identity_and_only_lora_trains(tiny_model_dir: Path, base_logits) -> None:
    model = lora_model(tiny_model_dir)
    np.testing.assert_allclose(logits(model, batch()), base_logits, atol=1e-6)
    trainable = [n for n, p in model.named_parameters() if not p.stop_gradient]
    assert all(".lora_A." in n or ".lora_B." in n for n in trainable)
    # 2 layers x 7 Hugging Face projections x (A, B): q/k/v and gate/up each get their own pair inside fused layers
    assert len(trainable) == 2 * 7 * 2
    assert f"{LAYER0}.self_attn.qkv_proj.lora_A.k_proj" in trainable


def test_q_and_v_adapt_exactly_their_slices_of_the_fused_qkv(tiny_model_dir: Path, base_logits) -> None:
    model = lora_model(tiny_model_dir, ["q_proj", "v_proj", "up_proj"])
    perturb(model)
    adapted = logits(model, batch())
    assert np.abs(adapted - base_logits).max() > 1e-3
    before = hf_tensors(AutoModelMIX.from_pretrained(tiny_model_dir))
    merged = fold_adapter(model)
    np.testing.assert_allclose(logits(merged, batch()), adapted, atol=1e-5)
    after = hf_tensors(merged)
    for name in (
        "self_attn.k_proj.weight",
        "self_attn.k_proj.bias",
        "mlp.gate_proj.weight",
        "self_attn.o_proj.weight",
    ):
        np.testing.assert_array_equal(after[f"{LAYER0}.{name}"], before[f"{LAYER0}.{name}"], err_msg=name)
    for name in ("self_attn.q_proj.weight", "self_attn.v_proj.weight", "mlp.up_proj.weight"):
        assert np.abs(after[f"{LAYER0}.{name}"] - before[f"{LAYER0}.{name}"]).min() > 0, name


def test_merged_weight_equals_w_plus_scaled_ba_per_slice(tiny_model_dir: Path) -> None:
    """Independent oracle: PEFT's W + alpha/r * B @ A on Hugging Face's separate q weight."""
    model = lora_model(tiny_model_dir, ["q_proj"])
    perturb(model, seed=4)
    peft = adapter_state_dict(model)
    a = peft[f"base_model.model.{LAYER0}.self_attn.q_proj.lora_A.weight"]  # [r, in]
    b = peft[f"base_model.model.{LAYER0}.self_attn.q_proj.lora_B.weight"]  # [out, r]
    before = hf_tensors(AutoModelMIX.from_pretrained(tiny_model_dir))[f"{LAYER0}.self_attn.q_proj.weight"]
    after = hf_tensors(fold_adapter(model))[f"{LAYER0}.self_attn.q_proj.weight"]
    np.testing.assert_allclose(after, before + 8 / 4 * b @ a, atol=1e-6)


def test_save_writes_peft_format_and_reload_matches(tiny_model_dir: Path, tmp_path: Path) -> None:
    model = lora_model(tiny_model_dir, ["q_proj", "v_proj"], base_model_name_or_path=str(tiny_model_dir))
    perturb(model)
    expected = logits(model, batch(3))
    save_adapter(model, tmp_path)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 4 and config["lora_alpha"] == 8
    assert config["base_model_name_or_path"] == str(tiny_model_dir)
    weights = load_safetensors(tmp_path / "adapter_model.safetensors")
    expected_keys = {
        f"base_model.model.model.language_model.layers.{i}.self_attn.{p}.lora_{m}.weight"
        for i in range(2)
        for p in ("q_proj", "v_proj")
        for m in "AB"
    }
    assert set(weights) == expected_keys
    hidden = 64
    assert weights[f"base_model.model.{LAYER0}.self_attn.q_proj.lora_A.weight"].shape == (4, hidden)
    assert weights[f"base_model.model.{LAYER0}.self_attn.v_proj.lora_B.weight"].shape == (2 * 16, 4)  # 2 kv heads
    reloaded = load_adapter(AutoModelMIX.from_pretrained(tiny_model_dir), tmp_path)
    np.testing.assert_allclose(logits(reloaded, batch(3)), expected, atol=1e-6)


def test_adapter_under_older_transformers_names_loads(tiny_model_dir: Path, tmp_path: Path) -> None:
    """PEFT adapters trained with transformers < 4.52 name Qwen2.5-VL's layers `model.layers.N` and `visual.*`."""
    from paddlemix.utils.io import save_safetensors

    model = lora_model(tiny_model_dir, ["q_proj", "model.visual.*qkv"])
    perturb(model)
    expected = logits(model, batch(2))
    save_adapter(model, tmp_path)
    weights = load_safetensors(tmp_path / "adapter_model.safetensors")
    old = {
        k.replace("model.model.language_model.", "model.model.").replace("model.model.visual.", "model.visual."): v
        for k, v in weights.items()
    }
    assert any(".model.layers.0." in k for k in old) and any("base_model.model.visual." in k for k in old)
    save_safetensors(old, tmp_path / "adapter_model.safetensors")
    reloaded = load_adapter(AutoModelMIX.from_pretrained(tiny_model_dir), tmp_path)
    np.testing.assert_allclose(logits(reloaded, batch(2)), expected, atol=1e-6)


def test_modules_to_save_round_trip_in_torch_layout(tiny_model_dir: Path, tmp_path: Path) -> None:
    model = lora_model(tiny_model_dir, ["o_proj"], modules_to_save=["model.visual.merger"])
    assert not model.model.visual.merger.mlp[0].weight.stop_gradient
    assert model.model.visual.blocks[0].attn.qkv.weight.stop_gradient
    perturb(model)
    with paddle.no_grad():
        model.model.visual.merger.mlp[0].weight.set_value(model.model.visual.merger.mlp[0].weight * 1.5)
    save_adapter(model, tmp_path)
    adapter = read_adapter(tmp_path)
    assert adapter.modules_to_save == ["model.visual.merger"]
    w = adapter.saved["model.visual.merger.mlp.0.weight"]
    np.testing.assert_array_equal(w, to_numpy(model.model.visual.merger.mlp[0].weight).T)
    reloaded = load_adapter(AutoModelMIX.from_pretrained(tiny_model_dir), tmp_path)
    np.testing.assert_array_equal(to_numpy(reloaded.model.visual.merger.mlp[0].weight), w.T)


def test_merge_folder_equals_adapter_forward(tiny_model_dir: Path, tmp_path: Path) -> None:
    model = lora_model(tiny_model_dir)
    perturb(model)
    expected = logits(model, batch(3))
    save_adapter(model, tmp_path / "adapter")
    merged_dir = merge_adapter(tiny_model_dir, tmp_path / "adapter", tmp_path / "merged")
    assert (merged_dir / "model.safetensors").is_file() and (merged_dir / "preprocessor_config.json").is_file()
    np.testing.assert_allclose(logits(AutoModelMIX.from_pretrained(merged_dir), batch(3)), expected, atol=1e-5)


@pytest.mark.parametrize("family", ["tiny_qwen3_vl_dir", "tiny_llava_dir"])
def test_other_families_slice_fused_layers_exactly(request, family: str) -> None:
    model_dir = request.getfixturevalue(family)
    base = AutoModelMIX.from_pretrained(model_dir)
    before = hf_tensors(base)
    model = lora_model(model_dir, ["q_proj", "v_proj", "gate_proj"])
    perturb(model)
    adapted = logits(model, batch())
    after = hf_tensors(fold_adapter(model))
    np.testing.assert_allclose(logits(model, batch()), adapted, atol=1e-5)
    assert np.abs(adapted - logits(base, batch())).max() > 1e-3
    np.testing.assert_array_equal(
        after[f"{LAYER0}.self_attn.k_proj.weight"], before[f"{LAYER0}.self_attn.k_proj.weight"]
    )
    np.testing.assert_array_equal(after[f"{LAYER0}.mlp.up_proj.weight"], before[f"{LAYER0}.mlp.up_proj.weight"])
    assert np.abs(after[f"{LAYER0}.self_attn.v_proj.weight"] - before[f"{LAYER0}.self_attn.v_proj.weight"]).max() > 0


def test_init_is_deterministic_given_the_seed(tiny_model_dir: Path) -> None:
    def a_matrices(seed: int) -> dict[str, np.ndarray]:
        model = lora_model(tiny_model_dir, ["q_proj", "down_proj"], seed=seed)
        return {n: p.numpy() for n, p in model.named_parameters() if ".lora_A." in n}

    paddle.seed(123)
    first = a_matrices(7)
    paddle.seed(456)  # the global random state does not matter
    again, other = a_matrices(7), a_matrices(8)
    for name in first:
        np.testing.assert_array_equal(first[name], again[name])
        assert np.abs(first[name] - other[name]).max() > 0
        bound = 1 / np.sqrt(first[name].shape[0])
        assert np.abs(first[name]).max() <= bound and first[name].std() > bound / 4


def test_dropout_is_active_only_in_training(tiny_model_dir: Path) -> None:
    model = lora_model(tiny_model_dir, ["q_proj"], dropout=0.5)
    perturb(model, std=0.3)
    model.eval()
    np.testing.assert_array_equal(logits(model, batch()), logits(model, batch()))
    model.train()
    assert np.abs(logits(model, batch()) - logits(model, batch())).max() > 1e-4


def test_lora_inside_a_fully_trained_module_is_refused(tiny_model_dir: Path) -> None:
    with pytest.raises(UserError, match="trains fully"):
        lora_model(tiny_model_dir, ["q_proj", "model.visual.merger.*"], modules_to_save=["model.visual.merger"])


def test_adapter_for_another_model_is_a_user_error(tiny_model_dir: Path, tiny_llava_dir: Path, tmp_path) -> None:
    model = lora_model(tiny_llava_dir, ["fc1"])
    save_adapter(model, tmp_path)
    with pytest.raises(UserError, match="not a Linear layer of this model"):
        load_adapter(AutoModelMIX.from_pretrained(tiny_model_dir), tmp_path)
