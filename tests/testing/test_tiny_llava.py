"""The tiny CLIP and causal LM folders are real Hugging Face checkpoints: transformers 4.57 loads every tensor."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors.numpy import load_file
from tokenizers import Tokenizer

from paddlemix.testing.tiny_llava import build_tiny_causal_lm

HF_CLASSES = {"qwen2": "Qwen2ForCausalLM", "llama": "LlamaForCausalLM"}


@pytest.fixture(scope="module", params=[("qwen2", False), ("qwen2", True), ("llama", False)], ids=str)
def lm_dir(request, tmp_path_factory, tiny_qwen2_lm_dir: Path) -> tuple[str, bool, Path]:
    family, tied = request.param
    if (family, tied) == ("qwen2", False):
        return family, tied, tiny_qwen2_lm_dir
    return family, tied, build_tiny_causal_lm(tmp_path_factory.mktemp(family), family, tie_word_embeddings=tied)


def read(folder: Path, name: str) -> dict:
    return json.loads((folder / name).read_text())


def test_clip_folder_loads_in_hf_without_missing_keys(tiny_clip_dir: Path, hf_llava_files) -> None:
    report = hf_llava_files("load", "CLIPVisionModel", tiny_clip_dir)
    assert report["missing_keys"] == report["unexpected_keys"] == report["mismatched_keys"] == []
    tensors = load_file(str(tiny_clip_dir / "model.safetensors"))
    assert report["parameters"] == sum(t.size for t in tensors.values())


def test_clip_folder_layout(tiny_clip_dir: Path) -> None:
    config = read(tiny_clip_dir, "config.json")
    assert config["model_type"] == "clip_vision_model"
    tensors = load_file(str(tiny_clip_dir / "model.safetensors"))
    assert all(name.startswith("vision_model.") for name in tensors)
    positions = (config["image_size"] // config["patch_size"]) ** 2 + 1
    assert tensors["vision_model.embeddings.position_embedding.weight"].shape == (positions, config["hidden_size"])
    assert read(tiny_clip_dir, "preprocessor_config.json")["crop_size"] == {"height": 56, "width": 56}


def test_lm_loads_in_hf_without_missing_keys(lm_dir, hf_llava_files) -> None:
    family, _, folder = lm_dir
    report = hf_llava_files("load", HF_CLASSES[family], folder)
    assert report["missing_keys"] == report["unexpected_keys"] == report["mismatched_keys"] == []


def test_lm_weights_follow_the_family(lm_dir) -> None:
    family, tied, folder = lm_dir
    tensors = load_file(str(folder / "model.safetensors"))
    assert ("model.layers.0.self_attn.q_proj.bias" in tensors) == (family == "qwen2")
    assert ("lm_head.weight" in tensors) != tied
    config = read(folder, "config.json")
    assert config["model_type"] == family and config["vocab_size"] % 64 == 0
    assert tensors["model.embed_tokens.weight"].shape == (config["vocab_size"], config["hidden_size"])


def test_lm_tokenizer_has_pad_token_and_chat_template(lm_dir, hf_llava_files) -> None:
    _, _, folder = lm_dir
    info = hf_llava_files("tokenizer", folder, "What color is the circle?")
    config = read(folder, "tokenizer_config.json")
    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    assert info["pad_token"] == config["pad_token"] and info["pad_token_id"] == tok.token_to_id(config["pad_token"])
    assert info["pad_token"] != info["eos_token"]
    assert info["chat_template"] == config["chat_template"] and "<|im_start|>" in info["chat_template"]
    assert info["ids"] == [tok.encode("What color is the circle?", add_special_tokens=False).ids]
    assert info["len"] == tok.get_vocab_size(with_added_tokens=True) <= read(folder, "config.json")["vocab_size"]
    assert not (folder / "chat_template.json").exists()
