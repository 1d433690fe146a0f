"""The streaming merge against an independent numpy reference: sharded bf16 in, sharded bf16 out, every adapter
tensor used, untouched tensors byte for byte, inputs never written."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from paddlemix.models import ADAPTERS
from paddlemix.peft.merge import INDEX, merge_checkpoint
from paddlemix.testing.checkpoints import copy_sharded
from paddlemix.testing.peft_adapter import PEFT_PREFIX, scaling_of, write_peft_adapter
from paddlemix.utils.errors import UserError

LM_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# model_type -> (session fixture, extra LoRA targets, modules_to_save in transformers' in-memory names)
FAMILIES = {
    "qwen2_5_vl": ("tiny_model_dir", ("attn.qkv",), ("model.visual.merger",)),
    "llava": ("tiny_llava_dir", (), ("model.multi_modal_projector",)),
}


def load_all(folder: Path) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for path in sorted(folder.glob("*.safetensors")):
        out.update(load_file(str(path)))
    return out


def within_one_bf16_ulp(got: np.ndarray, expected: np.ndarray) -> bool:
    """|got - expected| <= one bfloat16 unit in the last place of the larger of the two (8 significant bits)."""
    got, expected = got.astype(np.float32), expected.astype(np.float32)
    magnitude = np.maximum(np.abs(got), np.abs(expected))
    ulp = np.exp2(np.floor(np.log2(np.maximum(magnitude, 1e-38))) - 7)
    return bool((np.abs(got - expected) <= ulp).all())


def reference_merge(base: dict[str, np.ndarray], adapter: dict[str, np.ndarray], scaling: float, family) -> dict:
    """base + scaling * B @ A (float64 sums, bf16 by ml_dtypes), adapter full tensors cast to bf16, by base name."""
    by_canonical = {family.parameter_name(k): k for k in base}
    out = {}
    for key, value in adapter.items():
        name = key.removeprefix(PEFT_PREFIX)
        if name.endswith(".lora_A.weight"):
            module = name.removesuffix(".lora_A.weight")
            b = adapter[f"{PEFT_PREFIX}{module}.lora_B.weight"].astype(np.float64)
            base_name = by_canonical[module + ".weight"]
            merged = base[base_name].astype(np.float64) + scaling * (b @ value.astype(np.float64))
            out[base_name] = merged.astype(np.float32).astype(ml_dtypes.bfloat16)
        elif not name.endswith(".lora_B.weight"):
            out[by_canonical[name]] = value.astype(ml_dtypes.bfloat16)
    return out


@pytest.fixture(params=sorted(FAMILIES))
def sharded_bf16(request, tmp_path_factory) -> tuple[str, Path]:
    model_type = request.param
    source = request.getfixturevalue(FAMILIES[model_type][0])
    return model_type, copy_sharded(source, tmp_path_factory.mktemp(f"{model_type}_bf16") / "base", shards=3)


def test_sharded_bf16_merge_equals_numpy_reference(sharded_bf16, tmp_path: Path) -> None:
    model_type, base_dir = sharded_bf16
    family = ADAPTERS[model_type]
    _, extra_targets, to_save = FAMILIES[model_type]
    adapter = write_peft_adapter(
        tmp_path / "adapter", base_dir, family.parameter_name, LM_TARGETS + extra_targets, rank=4, alpha=16,
        modules_to_save=to_save,
    )  # fmt: skip
    base = load_all(base_dir)
    total = sum(v.nbytes for v in base.values())
    limit = total // 4
    out = merge_checkpoint(base_dir, tmp_path / "adapter", tmp_path / "merged", max_shard_size=limit)

    index = json.loads((out / INDEX).read_text())
    shard_files = sorted(set(index["weight_map"].values()))
    assert len(shard_files) >= 4 and sorted(p.name for p in out.glob("*.safetensors")) == shard_files
    assert set(index["weight_map"]) == set(base) and index["metadata"]["total_size"] == total
    for file in shard_files:
        tensors = load_file(str(out / file))
        assert set(tensors) == {k for k, f in index["weight_map"].items() if f == file}
        assert sum(v.nbytes for v in tensors.values()) <= limit
    assert json.loads((out / "config.json").read_text())["torch_dtype"] == "bfloat16"

    merged = load_all(out)
    expected = reference_merge(base, adapter, scaling_of(tmp_path / "adapter"), family)
    lora_modules = sum(k.endswith(".lora_A.weight") for k in adapter)
    assert lora_modules >= 14 and len(expected) == lora_modules + sum(".lora_" not in k for k in adapter)
    for name, value in merged.items():
        assert value.dtype == base[name].dtype, name
        if name in expected:
            assert not np.array_equal(value.view(np.uint16), base[name].view(np.uint16)), name
            assert within_one_bf16_ulp(value, expected[name]), name
        else:  # untouched: the same bytes
            assert value.tobytes() == base[name].tobytes(), name


def test_float32_rslora_merge_and_single_output_file(tiny_model_dir: Path, tmp_path: Path) -> None:
    family = ADAPTERS["qwen2_5_vl"]
    adapter = write_peft_adapter(
        tmp_path / "adapter", tiny_model_dir, family.parameter_name, ("o_proj",), rank=8, alpha=4, use_rslora=True
    )
    out = merge_checkpoint(tiny_model_dir, tmp_path / "adapter", tmp_path / "merged")
    assert sorted(p.name for p in out.iterdir() if p.suffix == ".safetensors") == ["model.safetensors"]
    assert not (out / INDEX).exists()
    base, merged = load_all(tiny_model_dir), load_all(out)
    a = adapter[f"{PEFT_PREFIX}model.language_model.layers.1.self_attn.o_proj.lora_A.weight"]
    b = adapter[f"{PEFT_PREFIX}model.language_model.layers.1.self_attn.o_proj.lora_B.weight"]
    name = "model.layers.1.self_attn.o_proj.weight"
    np.testing.assert_allclose(merged[name], base[name] + 4 / np.sqrt(8) * (b @ a), rtol=0, atol=1e-6)
    assert json.loads((out / "config.json").read_text())["torch_dtype"] == "float32"


def test_merged_model_stops_on_the_ids_that_ended_the_trained_answers(tiny_model_dir: Path, tmp_path: Path) -> None:
    base_dir = tmp_path / "base"  # laid out as a base checkpoint: generation_config.json's eos is one id
    base_dir.mkdir()
    for file in tiny_model_dir.iterdir():
        if file.name != "generation_config.json":
            (base_dir / file.name).symlink_to(file)
    (base_dir / "generation_config.json").write_text(json.dumps({"eos_token_id": 7, "do_sample": False}))
    write_peft_adapter(tmp_path / "adapter", base_dir, ADAPTERS["qwen2_5_vl"].parameter_name, ("q_proj",))
    (tmp_path / "adapter" / "run_args.json").write_text(json.dumps({"stop_token_ids": [9]}))
    out = merge_checkpoint(base_dir, tmp_path / "adapter", tmp_path / "merged")
    assert json.loads((out / "generation_config.json").read_text()) == {"eos_token_id": [7, 9], "do_sample": False}
    assert json.loads((base_dir / "generation_config.json").read_text())["eos_token_id"] == 7


def tree_digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*")
            if p.is_file()}  # fmt: skip


def test_read_only_base_and_adapter_are_left_untouched(tiny_model_dir: Path, tmp_path: Path) -> None:
    base_dir = tmp_path / "base"
    base_dir.mkdir()
    for file in tiny_model_dir.iterdir():
        (base_dir / file.name).write_bytes(file.read_bytes())
    write_peft_adapter(tmp_path / "adapter", base_dir, ADAPTERS["qwen2_5_vl"].parameter_name, ("q_proj",))
    (tmp_path / "adapter" / "chat_template.jinja").write_text("{{ messages[0]['content'] }}")
    before = {d: tree_digest(d) for d in (base_dir, tmp_path / "adapter")}
    for folder in (base_dir, tmp_path / "adapter"):
        for file in folder.iterdir():
            file.chmod(stat.S_IRUSR | stat.S_IRGRP)
        folder.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        out = merge_checkpoint(base_dir, tmp_path / "adapter", tmp_path / "merged")
    finally:
        for folder in (base_dir, tmp_path / "adapter"):
            folder.chmod(0o755)
    assert {d: tree_digest(d) for d in before} == before
    assert (out / "chat_template.jinja").read_text() == "{{ messages[0]['content'] }}"
    for file in out.iterdir():  # copied side files are writable, not read-only copies of the inputs' modes
        assert file.stat().st_mode & stat.S_IWUSR, file.name
    assert os.access(out / "tokenizer_config.json", os.W_OK)


@pytest.mark.parametrize("out_name", ["base", "base/merged", "adapter", "."])
def test_output_inside_an_input_is_refused(tiny_model_dir: Path, tmp_path: Path, out_name: str) -> None:
    (tmp_path / "base").symlink_to(tiny_model_dir)
    write_peft_adapter(tmp_path / "adapter", tiny_model_dir, ADAPTERS["qwen2_5_vl"].parameter_name, ("q_proj",))
    with pytest.raises(UserError, match="merge_model_path"):
        merge_checkpoint(tmp_path / "base", tmp_path / "adapter", tmp_path / out_name)


def _edit_adapter(folder: Path, edit) -> None:
    tensors = load_file(str(folder / "adapter_model.safetensors"))
    edit(tensors)
    save_file(tensors, str(folder / "adapter_model.safetensors"))


def _rename(old: str, new: str):
    return lambda t: t.__setitem__(new, t.pop(old))


def _fuse(tensors: dict) -> None:
    """Name layer 0's q_proj matrices as paddleformers' fused qkv_proj, which checkpoints do not have."""
    for part in "AB":
        tensors[LORA_KEY.format(part).replace("q_proj", "qkv_proj")] = tensors.pop(LORA_KEY.format(part))


LORA_KEY = PEFT_PREFIX + "model.language_model.layers.0.self_attn.q_proj.lora_{}.weight"
BROKEN_ADAPTERS = {
    "unknown module": (_rename(LORA_KEY.format("A"), LORA_KEY.format("A").replace("q_proj", "qq_proj")),
                       "q_proj has only \\['lora_B'\\]"),
    "unknown full tensor": (lambda t: t.__setitem__(PEFT_PREFIX + "model.nowhere.weight", np.ones(2, np.float32)),
                            "match no tensor of the base model, first: base_model.model.model.nowhere.weight"),
    "A without B": (lambda t: t.pop(LORA_KEY.format("B")), "has only \\['lora_A'\\]"),
    "wrong rank shape": (lambda t: t.__setitem__(LORA_KEY.format("B"), np.ones((5, 4), np.float32)),
                         "makes a \\[5, 64\\] update"),
    "LoRA target also replaced": (lambda t: t.__setitem__(LORA_KEY.format("A").replace(".lora_A", ""),
                                                          np.ones((64, 64), np.float32)), "both a LoRA target"),
    "fused name": (_fuse, "first: base_model.model.model.language_model.layers.0.self_attn.qkv_proj"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(BROKEN_ADAPTERS))
def test_adapter_that_does_not_fit_is_a_user_error(tiny_model_dir: Path, tmp_path: Path, case: str) -> None:
    edit, message = BROKEN_ADAPTERS[case]
    write_peft_adapter(tmp_path / "adapter", tiny_model_dir, ADAPTERS["qwen2_5_vl"].parameter_name, ("q_proj",))
    _edit_adapter(tmp_path / "adapter", edit)
    with pytest.raises(UserError, match=message):
        merge_checkpoint(tiny_model_dir, tmp_path / "adapter", tmp_path / "merged")
    assert not (tmp_path / "merged").exists()


def test_legacy_checkpoint_names_pair_with_in_memory_adapter_names() -> None:
    qwen, llava = ADAPTERS["qwen2_5_vl"].parameter_name, ADAPTERS["llava"].parameter_name
    assert qwen("model.layers.3.mlp.up_proj.weight") == "model.language_model.layers.3.mlp.up_proj.weight"
    assert qwen("visual.blocks.0.attn.qkv.weight") == "model.visual.blocks.0.attn.qkv.weight"
    assert qwen("model.language_model.norm.weight") == "model.language_model.norm.weight"
    assert llava("language_model.model.layers.0.self_attn.q_proj.weight") == (
        "model.language_model.layers.0.self_attn.q_proj.weight"
    )
    assert llava("language_model.lm_head.weight") == "lm_head.weight"
    assert llava("multi_modal_projector.linear_1.weight") == "model.multi_modal_projector.linear_1.weight"


def test_embedding_lora_and_adapters_with_legacy_module_names(tiny_model_dir: Path, tmp_path: Path) -> None:
    """PEFT's Embedding LoRA (delta = (B @ A).T), and an adapter trained on transformers < 4.52, whose module
    names are the legacy checkpoint names (`model.layers.*`, `visual.*`)."""
    base = load_all(tiny_model_dir)
    vocab, hidden = base["model.embed_tokens.weight"].shape
    rng = np.random.default_rng(5)
    a_emb, b_emb = (
        rng.normal(0, 0.1, (2, vocab)).astype(np.float32),
        rng.normal(0, 0.1, (hidden, 2)).astype(np.float32),
    )
    a_qkv = rng.normal(0, 0.1, (2, 32)).astype(np.float32)
    b_qkv = rng.normal(0, 0.1, (96, 2)).astype(np.float32)
    merger = rng.normal(0, 0.1, base["visual.merger.mlp.2.bias"].shape).astype(np.float32)
    tensors = {
        PEFT_PREFIX + "model.embed_tokens.lora_embedding_A": a_emb,
        PEFT_PREFIX + "model.embed_tokens.lora_embedding_B": b_emb,
        PEFT_PREFIX + "visual.blocks.1.attn.qkv.lora_A.weight": a_qkv,
        PEFT_PREFIX + "visual.blocks.1.attn.qkv.lora_B.weight": b_qkv,
        PEFT_PREFIX + "visual.merger.mlp.2.bias": merger,
    }
    (tmp_path / "adapter").mkdir()
    save_file(tensors, str(tmp_path / "adapter" / "adapter_model.safetensors"))
    config = {"peft_type": "LORA", "r": 2, "lora_alpha": 4, "target_modules": ["embed_tokens", "qkv"]}
    (tmp_path / "adapter" / "adapter_config.json").write_text(json.dumps(config))
    merged = load_all(merge_checkpoint(tiny_model_dir, tmp_path / "adapter", tmp_path / "merged"))
    expected_emb = base["model.embed_tokens.weight"] + 2.0 * (b_emb @ a_emb).T
    np.testing.assert_allclose(merged["model.embed_tokens.weight"], expected_emb, rtol=0, atol=1e-6)
    expected_qkv = base["visual.blocks.1.attn.qkv.weight"] + 2.0 * b_qkv @ a_qkv
    np.testing.assert_allclose(merged["visual.blocks.1.attn.qkv.weight"], expected_qkv, rtol=0, atol=1e-6)
    assert merged["visual.merger.mlp.2.bias"].tobytes() == merger.tobytes()  # same dtype: the adapter's bytes
    changed = {k for k in base if base[k].tobytes() != merged[k].tobytes()}
    assert changed == {"model.embed_tokens.weight", "visual.blocks.1.attn.qkv.weight", "visual.merger.mlp.2.bias"}


def test_config_names_the_dtype_the_weights_have(tiny_model_dir: Path, tmp_path: Path) -> None:
    base_dir = tmp_path / "base"
    shutil.copytree(tiny_model_dir, base_dir)
    config = json.loads((base_dir / "config.json").read_text())
    config["torch_dtype"] = "bfloat16"  # wrong: the weights are float32
    config["vision_config"]["torch_dtype"] = "bfloat16"
    (base_dir / "config.json").write_text(json.dumps(config))
    write_peft_adapter(tmp_path / "adapter", base_dir, ADAPTERS["qwen2_5_vl"].parameter_name, ("q_proj",))
    out = merge_checkpoint(base_dir, tmp_path / "adapter", tmp_path / "merged")
    merged_config = json.loads((out / "config.json").read_text())
    assert merged_config["torch_dtype"] == merged_config["vision_config"]["torch_dtype"] == "float32"
    assert {k: v for k, v in merged_config.items() if k not in ("torch_dtype", "vision_config")} == {
        k: v for k, v in config.items() if k not in ("torch_dtype", "vision_config")}  # fmt: skip


def test_adapter_saved_by_the_training_merges_to_the_adapters_outputs(tiny_model_dir: Path, tmp_path: Path) -> None:
    """The adapter `save_adapter` writes (PEFT format) merges, by the streaming merge, into a model whose logits
    equal base + adapter."""
    import paddle

    from paddlemix.auto import AutoModelMIX
    from paddlemix.peft.lora import apply_lora, lora_modules, save_adapter
    from paddlemix.peft.merge import merge_adapter
    from paddlemix.testing.lora import perturb_lora

    modules = lora_modules(tiny_model_dir, ADAPTERS["qwen2_5_vl"], None)
    lora = apply_lora(AutoModelMIX.from_pretrained(tiny_model_dir), modules, 4, 8)
    perturb_lora(lora, seed=2)
    inputs = {"input_ids": paddle.to_tensor(np.random.default_rng(0).integers(0, 400, (1, 12)))}
    with paddle.no_grad():
        expected = lora(**inputs).logits.numpy()
        base = AutoModelMIX.from_pretrained(tiny_model_dir)(**inputs).logits.numpy()
    save_adapter(lora, tmp_path / "adapter")
    merged = merge_adapter(tiny_model_dir, tmp_path / "adapter", tmp_path / "merged")
    with paddle.no_grad():
        got = AutoModelMIX.from_pretrained(merged)(**inputs).logits.numpy()
    assert np.abs(expected - base).max() > 1e-3
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_base_saved_by_transformers_5_merges_to_files_both_generations_read(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """A base whose config.json spells the rotary settings as `rope_parameters` and whose tokenizer_config.json has
    5.x's `extra_special_tokens` list: the merged folder states the same settings as 4.x spells them."""
    from paddlemix.models.hf_config import normalize_rope

    base_dir = tmp_path / "base"
    shutil.copytree(tiny_model_dir, base_dir)
    config = json.loads((base_dir / "config.json").read_text())
    for part in (config, *([config["text_config"]] if "text_config" in config else [])):
        scaling = part.pop("rope_scaling", None) or {}
        part["rope_parameters"] = {**scaling, "rope_theta": part.pop("rope_theta", 1e6)}
    (base_dir / "config.json").write_text(json.dumps(config))
    tokenizer = json.loads((base_dir / "tokenizer_config.json").read_text())
    tokenizer["extra_special_tokens"] = tokenizer.pop("additional_special_tokens", None) or ["<|im_start|>"]
    (base_dir / "tokenizer_config.json").write_text(json.dumps(tokenizer))
    write_peft_adapter(tmp_path / "adapter", base_dir, ADAPTERS["qwen2_5_vl"].parameter_name, ("q_proj",))
    out = merge_checkpoint(base_dir, tmp_path / "adapter", tmp_path / "merged")
    merged = json.loads((out / "config.json").read_text())
    assert "rope_parameters" not in json.dumps(merged)
    assert merged["rope_theta"] == config["rope_parameters"]["rope_theta"] and merged["rope_scaling"]["mrope_section"]
    assert normalize_rope(merged, "merged") == normalize_rope(config, "base")
    written = json.loads((out / "tokenizer_config.json").read_text())
    assert "extra_special_tokens" not in written and written["additional_special_tokens"]
