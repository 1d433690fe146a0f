"""config.json of both transformers generations read into the same values (paddlemix/models/hf_config.py), and the
other file shapes 5.x writes: LLaVA's CLIP names without `vision_model.`, LoRA target regexes that hold in both
module trees, LLaVA's image settings nested in processor_config.json."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pytest

from paddlemix.models import adapter_for
from paddlemix.models.hf_config import ROPE_TYPES, normalize_rope, rope_for_both
from paddlemix.models.hf_layout import both_generations, name_for_both
from paddlemix.models.llava import paddle_name as llava_paddle_name
from paddlemix.models.llava.processor import image_processor_settings
from paddlemix.peft.targets import peft_target_regex
from paddlemix.utils.errors import UserError

# Qwen3-VL-2B-Instruct's text and vision settings as transformers 5.x saves them (rope_parameters, no rope_theta).
QWEN3_VL_2B_TEXT = {
    "model_type": "qwen3_vl_text", "vocab_size": 151936, "hidden_size": 2048, "intermediate_size": 6144,
    "num_hidden_layers": 28, "num_attention_heads": 16, "num_key_value_heads": 8, "head_dim": 128,
    "hidden_act": "silu", "max_position_embeddings": 262144, "rms_norm_eps": 1e-6, "tie_word_embeddings": True,
    "attention_bias": False, "bos_token_id": 151643, "eos_token_id": 151645, "dtype": "bfloat16",
    "rope_parameters": {"rope_theta": 5000000, "mrope_section": [24, 20, 20], "mrope_interleaved": True,
                        "rope_type": "default"},
}  # fmt: skip
QWEN3_VL_2B_VISION = {
    "model_type": "qwen3_vl_vision", "depth": 24, "hidden_size": 1024, "hidden_act": "gelu_pytorch_tanh",
    "intermediate_size": 4096, "num_heads": 16, "in_channels": 3, "patch_size": 16, "spatial_merge_size": 2,
    "temporal_patch_size": 2, "out_hidden_size": 2048, "num_position_embeddings": 2304,
    "deepstack_visual_indexes": [5, 11, 17], "rope_parameters": {"rope_theta": 10000.0, "rope_type": "axial"},
}  # fmt: skip


def qwen3_vl_config(text: dict) -> dict:
    return {"architectures": ["Qwen3VLForConditionalGeneration"], "model_type": "qwen3_vl", "text_config": text,
            "vision_config": QWEN3_VL_2B_VISION, "tie_word_embeddings": True, "image_token_id": 151655,
            "video_token_id": 151656, "vision_start_token_id": 151652, "vision_end_token_id": 151653,
            "dtype": "bfloat16", "transformers_version": "5.25.0"}  # fmt: skip


def write_config(folder: Path, config: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def loaded_rope(folder: Path) -> tuple[float, dict]:
    text = adapter_for(folder).load_config(folder).text_config
    return text.rope_theta, text.rope_parameters


def test_qwen3_vl_2b_saved_by_transformers_5_is_read_with_its_theta_and_sections(tmp_path: Path) -> None:
    theta, params = loaded_rope(write_config(tmp_path / "hf5", qwen3_vl_config(QWEN3_VL_2B_TEXT)))
    assert theta == 5000000 and params["rope_theta"] == 5000000  # paddleformers alone reads 1e6
    assert params["mrope_section"] == [24, 20, 20] and params["mrope_interleaved"] is True


def test_both_generations_of_the_same_config_load_alike(tmp_path: Path) -> None:
    old = {k: v for k, v in QWEN3_VL_2B_TEXT.items() if k != "rope_parameters"}
    rope = dict(QWEN3_VL_2B_TEXT["rope_parameters"])
    old["rope_theta"] = rope.pop("rope_theta")
    old["rope_scaling"] = rope
    new = loaded_rope(write_config(tmp_path / "hf5", qwen3_vl_config(QWEN3_VL_2B_TEXT)))
    assert loaded_rope(write_config(tmp_path / "hf4", qwen3_vl_config(old))) == new


@pytest.mark.parametrize(
    "raw, expected",
    [
        # Qwen2-VL/2.5-VL 4.x: settings at the top level only; the original release's {"type": "mrope"}
        ({"rope_theta": 1e6, "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]}, "text_config": {}},
         {"rope_theta": 1e6, "rope_type": "default", "mrope_section": [16, 24, 24]}),
        # Qwen2.5-VL 5.x: "type": "mrope" beside "rope_type": "default"
        ({"text_config": {"rope_parameters": {"rope_theta": 1e6, "rope_type": "default", "type": "mrope",
                                              "mrope_section": [2, 3, 3]}}},
         {"rope_theta": 1e6, "rope_type": "default", "mrope_section": [2, 3, 3]}),
        # a Llama LM with scaling in 5.x
        ({"text_config": {"rope_parameters": {"rope_theta": 5e5, "rope_type": "llama3", "factor": 8.0}}},
         {"rope_theta": 5e5, "rope_type": "llama3", "factor": 8.0}),
    ],
)  # fmt: skip
def test_rope_settings_of_either_spelling(raw: dict, expected: dict) -> None:
    assert normalize_rope(raw, "config.json")["text_config"] == expected


def test_no_rope_settings_keep_the_class_defaults() -> None:
    assert normalize_rope({"text_config": {"hidden_size": 8}}, "config.json") == {}


@pytest.mark.parametrize(
    "raw, key",
    [
        ({"text_config": {"rope_theta": 1e6, "rope_parameters": {"rope_theta": 5e6}}}, "rope_theta"),
        ({"text_config": {"rope_scaling": {"mrope_section": [16, 24, 24]},
                          "rope_parameters": {"mrope_section": [24, 20, 20]}}}, "mrope_section"),
        ({"rope_theta": 1e6, "text_config": {"rope_parameters": {"rope_theta": 5e6}}}, "rope_theta"),
        ({"vision_config": {"rope_parameters": {"rope_theta": 5e4}}, "text_config": {}}, "vision_config"),
    ],
)  # fmt: skip
def test_conflicting_values_are_an_error_naming_the_key(raw: dict, key: str) -> None:
    with pytest.raises(UserError, match=key):
        normalize_rope(raw, "config.json")


def test_same_values_in_both_spellings_are_accepted() -> None:
    raw = {"text_config": {"rope_theta": 1000000, "rope_parameters": {"rope_theta": 1e6, "rope_type": "default"}}}
    assert normalize_rope(raw, "config.json")["text_config"]["rope_theta"] == 1e6


@pytest.mark.parametrize(
    "name, expected",
    [
        ("vision_tower.vision_model.encoder.layers.0.mlp.fc2.weight",  # 4.x file
         "model.vision_tower.vision_model.encoder.layers.0.mlp.fc2.weight"),
        ("vision_tower.encoder.layers.0.mlp.fc2.weight",  # 5.x file
         "model.vision_tower.vision_model.encoder.layers.0.mlp.fc2.weight"),
        ("vision_tower.embeddings.class_embedding", "model.vision_tower.vision_model.embeddings.class_embedding"),
        ("model.vision_tower.post_layernorm.bias", "model.vision_tower.vision_model.post_layernorm.bias"),  # 5.x
        ("language_model.model.layers.0.mlp.up_proj.weight", "model.language_model.layers.0.mlp.up_proj.weight"),
        ("language_model.lm_head.weight", "lm_head.weight"),
    ],
)  # fmt: skip
def test_llava_names_of_both_generations(name: str, expected: str) -> None:
    assert llava_paddle_name(name) == expected


def test_lora_target_regex_holds_in_both_module_trees() -> None:
    modules = [f"model.vision_tower.vision_model.encoder.layers.{i}.mlp.{p}" for i in range(2) for p in ("fc1", "fc2")]
    modules += ["model.language_model.layers.0.self_attn.q_proj"]
    pattern = peft_target_regex([m for m in modules if m.endswith("fc2")], modules)
    for i in range(2):
        assert re.fullmatch(pattern, f"model.vision_tower.vision_model.encoder.layers.{i}.mlp.fc2")  # 4.x
        assert re.fullmatch(pattern, f"model.vision_tower.encoder.layers.{i}.mlp.fc2")  # 5.x
        assert not re.fullmatch(pattern, f"model.vision_tower.encoder.layers.{i}.mlp.fc1")
    assert both_generations(re.escape("model.visual.blocks.0.attn.qkv")) == re.escape("model.visual.blocks.0.attn.qkv")


CLIP_SETTINGS = {"crop_size": {"height": 28, "width": 28}, "size": {"shortest_edge": 28}, "do_center_crop": True,
                 "image_mean": [0.5] * 3, "image_std": [0.5] * 3, "resample": 3}  # fmt: skip


def test_llava_image_settings_nested_in_processor_config(tmp_path: Path) -> None:
    nested = {"image_processor": {**CLIP_SETTINGS, "image_processor_type": "CLIPImageProcessor"}, "patch_size": 14}
    assert image_processor_settings(tmp_path, nested)["crop_size"] == {"height": 28, "width": 28}


def test_llava_image_settings_that_disagree_are_an_error(tmp_path: Path) -> None:
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(CLIP_SETTINGS))
    nested = {"image_processor": {**CLIP_SETTINGS, "size": {"shortest_edge": 336}}}
    with pytest.raises(UserError, match="disagree on size"):
        image_processor_settings(tmp_path, nested)
    same = {"image_processor": {**CLIP_SETTINGS, "image_processor_type": "CLIPImageProcessorFast"}}
    assert image_processor_settings(tmp_path, same) == CLIP_SETTINGS


def test_llava_folder_without_image_settings_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="preprocessor_config.json"):
        image_processor_settings(tmp_path, {"patch_size": 14})


@pytest.mark.parametrize(
    "raw, text",
    [
        # a Qwen2 LM saved by 5.x -> 4.x's spelling at the top level
        ({"model_type": "qwen2", "rope_parameters": {"rope_theta": 1e6, "rope_type": "default"}},
         {"rope_theta": 1e6, "rope_scaling": None}),
        # a Llama 3 LM with scaling saved by 5.x
        ({"model_type": "llama", "rope_parameters": {"rope_theta": 5e5, "rope_type": "llama3", "factor": 8.0}},
         {"rope_theta": 5e5, "rope_scaling": {"rope_type": "llama3", "factor": 8.0}}),
        # already 4.x's spelling: unchanged
        ({"model_type": "qwen2", "rope_theta": 1e6, "rope_scaling": None}, {"rope_theta": 1e6, "rope_scaling": None}),
    ],
)  # fmt: skip
def test_rope_written_for_both_generations(raw: dict, text: dict) -> None:
    out = rope_for_both(raw, "config.json")
    assert "rope_parameters" not in out and {k: out[k] for k in text} == text
    assert normalize_rope(out, "config.json") == normalize_rope(raw, "config.json")  # the same settings


def test_rope_written_for_both_in_text_config() -> None:
    raw = qwen3_vl_config(QWEN3_VL_2B_TEXT)
    text = rope_for_both(raw, "config.json")["text_config"]
    assert text["rope_theta"] == 5000000 and "rope_parameters" not in text
    assert text["rope_scaling"] == {"rope_type": "default", "mrope_section": [24, 20, 20], "mrope_interleaved": True}


def test_rope_types_are_the_ones_paddleformers_builds() -> None:
    from paddleformers.transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    assert set(ROPE_TYPES) == {"default", *ROPE_INIT_FUNCTIONS}


def test_unknown_rope_type_is_an_error_naming_file_and_section(tmp_path: Path) -> None:
    text = {**QWEN3_VL_2B_TEXT, "rope_parameters": {"rope_theta": 5e6, "rope_type": "ntk_magic", "factor": 2.0}}
    folder = write_config(tmp_path / "odd", qwen3_vl_config(text))
    with pytest.raises(UserError, match=r"config.json \(text_config\): rope_type \"ntk_magic\""):
        adapter_for(folder).load_config(folder)


def test_rope_settings_nothing_reads_are_one_warning(caplog: pytest.LogCaptureFixture) -> None:
    raw = {"model_type": "qwen2", "rope_parameters": {"rope_theta": 1e6, "rope_type": "default", "zeta": 3}}
    with caplog.at_level(logging.WARNING, logger="paddlemix.models.hf_config"):
        assert normalize_rope(raw, "config.json")[""]["zeta"] == 3
    assert [r.getMessage() for r in caplog.records if "zeta" in r.getMessage()] != []
    assert len(caplog.records) == 1


def test_tied_head_stated_differently_per_section_is_an_error(tmp_path: Path) -> None:
    """transformers 4.x ties by text_config's value, 5.x by the top level's: a file where they differ is refused."""
    config = {**qwen3_vl_config({**QWEN3_VL_2B_TEXT, "tie_word_embeddings": False}), "tie_word_embeddings": True}
    folder = write_config(tmp_path / "odd", config)
    with pytest.raises(UserError, match="tie_word_embeddings is True at the top level but False in text_config"):
        adapter_for(folder).load_config(folder)
    agreed = write_config(tmp_path / "agreed", qwen3_vl_config(QWEN3_VL_2B_TEXT))  # both true, as 5.x writes
    assert adapter_for(agreed).load_config(agreed).text_config.tie_word_embeddings is True


def test_untied_top_level_with_tied_text_config_is_accepted(tmp_path: Path) -> None:
    """How transformers 4.x saves a LLaVA whose LM is tied; 5.x ties it too."""
    config = {**qwen3_vl_config(QWEN3_VL_2B_TEXT), "tie_word_embeddings": False}
    folder = write_config(tmp_path / "llava_like", config)
    assert adapter_for(folder).load_config(folder).text_config.tie_word_embeddings is True


@pytest.mark.parametrize(
    "model_type, name, written",
    [
        ("llava", "vision_tower.encoder.layers.0.mlp.fc2.weight", "vision_tower.vision_model.encoder.layers.0.mlp.fc2.weight"),
        ("llava", "vision_tower.post_layernorm.bias", "vision_tower.vision_model.post_layernorm.bias"),
        ("llava", "vision_tower.vision_model.embeddings.class_embedding", "vision_tower.vision_model.embeddings.class_embedding"),
        ("llava", "language_model.model.embed_tokens.weight", "language_model.model.embed_tokens.weight"),
        ("qwen2_vl", "visual.blocks.0.attn.qkv.weight", "visual.blocks.0.attn.qkv.weight"),
    ],
)  # fmt: skip
def test_merged_llava_names_are_the_ones_both_generations_load(model_type: str, name: str, written: str) -> None:
    assert name_for_both(model_type, name) == written
