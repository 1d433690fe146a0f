"""Write the two tiny, randomly initialised checkpoints a LLaVA model is built from, in Hugging Face folder layout:
a CLIP vision tower (`CLIPVisionModel`) and a causal language model (`Qwen2ForCausalLM` or `LlamaForCausalLM`).

`paddlemix.models.llava.build.build_llava` joins them; tests and demos need nothing from a model hub.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

from safetensors.numpy import save_file

from paddlemix.models.llava.processor import CLIP_MEAN, CLIP_STD
from paddlemix.testing.tiny_model import (
    ADDED_TOKENS,
    MAX_LENGTH,
    _lm_weight_shapes,
    _model_vocab_size,
    _random_weights,
    _tokenized_folder,
)
from paddlemix.utils.io import write_json

# A text-only ChatML template with Qwen2.5's default system turn; the LM's own, so user text carries "<image>".
CHATML_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# The Llama LM's special tokens (Llama 3's bos/eos names, ChatML turn markers and a pad token of its own).
LLAMA_TOKENS: tuple[tuple[str, bool], ...] = (
    ("<|begin_of_text|>", True), ("<|end_of_text|>", True), ("<|im_start|>", True), ("<|im_end|>", True),
    ("<|pad|>", True),
)  # fmt: skip
LLAMA_TOKENIZER = {  # tokenizer_config.json of a tokenizer.json-only Llama 3-style tokenizer (no automatic bos)
    "bos_token": "<|begin_of_text|>", "eos_token": "<|im_end|>", "pad_token": "<|pad|>",
    "chat_template": CHATML_TEMPLATE, "clean_up_tokenization_spaces": False, "model_max_length": MAX_LENGTH,
    "model_input_names": ["input_ids", "attention_mask"], "tokenizer_class": "PreTrainedTokenizerFast",
}  # fmt: skip
FAMILIES = {"qwen2": "Qwen2ForCausalLM", "llama": "LlamaForCausalLM"}
TOKENS = {"qwen2": ADDED_TOKENS, "llama": LLAMA_TOKENS}
# llava-hf's Vicuna format (llava-1.5-*-hf): typed content, images first, each text part followed by a space, the
# answer in a {% generation %} block and no end-of-turn token; the generation prompt is "ASSISTANT:".
VICUNA_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': ' }}{% endif %}"
    "{% for part in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}"
    "{% for part in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{% if message['role'] == 'assistant' %}{% generation %}{{ part['text'] + ' ' }}{% endgeneration %}"
    "{% else %}{{ part['text'] + ' ' }}{% endif %}{% endfor %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)
# A Llama 2 / Vicuna tokenizer: <s> and </s>, and <s> put first by the tokenizer itself (add_special_tokens).
VICUNA_TOKENS: tuple[tuple[str, bool], ...] = (("<s>", True), ("</s>", True), ("<|pad|>", True))
VICUNA_TOKENIZER = {**LLAMA_TOKENIZER, "bos_token": "<s>", "eos_token": "</s>", "chat_template": VICUNA_TEMPLATE}


def _clip_vision_shapes(cfg: dict) -> dict[str, tuple[int, ...]]:
    """Names and shapes of HF's `CLIPVisionModel` (``vision_model.*``)."""
    h, inter, patch = cfg["hidden_size"], cfg["intermediate_size"], cfg["patch_size"]
    positions = (cfg["image_size"] // patch) ** 2 + 1  # patches + the class token
    e = "vision_model.embeddings."
    shapes: dict[str, tuple[int, ...]] = {
        e + "class_embedding": (h,),
        e + "patch_embedding.weight": (h, 3, patch, patch),
    }
    shapes[e + "position_embedding.weight"] = (positions, h)
    shapes.update({"vision_model.pre_layrnorm.weight": (h,), "vision_model.pre_layrnorm.bias": (h,)})
    for i in range(cfg["num_hidden_layers"]):
        p = f"vision_model.encoder.layers.{i}."
        for name in ("k_proj", "v_proj", "q_proj", "out_proj"):
            shapes.update({f"{p}self_attn.{name}.weight": (h, h), f"{p}self_attn.{name}.bias": (h,)})
        shapes.update({p + "layer_norm1.weight": (h,), p + "layer_norm1.bias": (h,)})
        shapes.update({p + "mlp.fc1.weight": (inter, h), p + "mlp.fc1.bias": (inter,)})
        shapes.update({p + "mlp.fc2.weight": (h, inter), p + "mlp.fc2.bias": (h,)})
        shapes.update({p + "layer_norm2.weight": (h,), p + "layer_norm2.bias": (h,)})
    shapes.update({"vision_model.post_layernorm.weight": (h,), "vision_model.post_layernorm.bias": (h,)})
    return shapes


def build_tiny_clip_vision(
    out_dir: str | Path,
    *,
    hidden_size: int = 32,
    num_layers: int = 2,
    num_heads: int = 2,
    image_size: int = 56,
    patch_size: int = 14,
    seed: int = 0,
) -> Path:
    """Write a random-weight HF `CLIPVisionModel` folder: config.json, model.safetensors, preprocessor_config.json."""
    if hidden_size % num_heads or image_size % patch_size:
        raise ValueError("num_heads must divide hidden_size and patch_size must divide image_size")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # fmt: off
    config = {
        "architectures": ["CLIPVisionModel"], "model_type": "clip_vision_model", "attention_dropout": 0.0,
        "hidden_act": "quick_gelu", "hidden_size": hidden_size, "intermediate_size": 4 * hidden_size,
        "num_hidden_layers": num_layers, "num_attention_heads": num_heads, "num_channels": 3,
        "image_size": image_size, "patch_size": patch_size, "layer_norm_eps": 1e-5, "projection_dim": 512,
        "initializer_factor": 1.0, "initializer_range": 0.02, "torch_dtype": "float32",
    }
    preprocessor = {
        "image_processor_type": "CLIPImageProcessor", "do_resize": True, "size": {"shortest_edge": image_size},
        "resample": 3, "do_center_crop": True, "crop_size": {"height": image_size, "width": image_size},
        "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": CLIP_MEAN,
        "image_std": CLIP_STD, "do_convert_rgb": True,
    }
    # fmt: on
    write_json(config, out / "config.json")
    write_json(preprocessor, out / "preprocessor_config.json")
    weights = _random_weights(_clip_vision_shapes(config), seed)
    save_file(weights, str(out / "model.safetensors"), metadata={"format": "pt"})
    return out


def _write_llama_tokenizer(out: Path, ids: dict[str, int]) -> dict[str, int]:
    """Turn the tokenizer files just written into a Llama 3-style tokenizer: tokenizer.json plus a config naming
    `PreTrainedTokenizerFast` and its tokens."""
    decoder = json.loads((out / "tokenizer_config.json").read_text(encoding="utf-8"))["added_tokens_decoder"]
    write_json({"added_tokens_decoder": decoder, **LLAMA_TOKENIZER}, out / "tokenizer_config.json")
    flags = {"lstrip": False, "normalized": False, "rstrip": False, "single_word": False}
    special = {k: {"content": LLAMA_TOKENIZER[k], **flags} for k in ("bos_token", "eos_token", "pad_token")}
    write_json(special, out / "special_tokens_map.json")
    for name in ("vocab.json", "merges.txt"):  # Llama 3 folders ship tokenizer.json only
        (out / name).unlink()
    return {"bos": ids["<|begin_of_text|>"], "eos": ids["<|im_end|>"], "pad": ids["<|pad|>"]}


def _write_vicuna_tokenizer(out: Path, ids: dict[str, int]) -> dict[str, int]:
    """Turn the tokenizer files just written into a Vicuna (Llama 2) one whose tokenizer.json puts <s> first."""
    decoder = json.loads((out / "tokenizer_config.json").read_text(encoding="utf-8"))["added_tokens_decoder"]
    write_json({"added_tokens_decoder": decoder, **VICUNA_TOKENIZER}, out / "tokenizer_config.json")
    flags = {"lstrip": False, "normalized": False, "rstrip": False, "single_word": False}
    special = {k: {"content": VICUNA_TOKENIZER[k], **flags} for k in ("bos_token", "eos_token", "pad_token")}
    write_json(special, out / "special_tokens_map.json")
    for name in ("vocab.json", "merges.txt"):
        (out / name).unlink()
    tokenizer = json.loads((out / "tokenizer.json").read_text(encoding="utf-8"))
    bos = {"SpecialToken": {"id": "<s>", "type_id": 0}}
    tokenizer["post_processor"] = {
        "type": "TemplateProcessing",
        "single": [bos, {"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [bos, {"Sequence": {"id": "A", "type_id": 0}}, bos, {"Sequence": {"id": "B", "type_id": 1}}],
        "special_tokens": {"<s>": {"id": "<s>", "ids": [ids["<s>"]], "tokens": ["<s>"]}},
    }
    write_json(tokenizer, out / "tokenizer.json")
    return {"bos": ids["<s>"], "eos": ids["</s>"], "pad": ids["<|pad|>"]}


def _write_qwen2_tokenizer(out: Path, ids: dict[str, int]) -> dict[str, int]:
    return {"bos": ids["<|endoftext|>"], "eos": ids["<|im_end|>"], "pad": ids["<|endoftext|>"]}


def build_tiny_causal_lm(
    out_dir: str | Path,
    family: Literal["qwen2", "llama"] = "qwen2",
    *,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 128,
    tie_word_embeddings: bool = False,
    seed: int = 0,
    corpus: Iterable[str] | None = None,
    vicuna: bool = False,
) -> Path:
    """Write a random-weight HF `Qwen2ForCausalLM` (q/k/v biases) or `LlamaForCausalLM` folder with a trained BPE
    tokenizer, a ChatML chat template and a pad token; the vocabulary is the tokenizer's size rounded up to 64.
    `vicuna` (Llama only): laid out as llava-hf's Vicuna LM, with <s>/</s>, an automatic <s> and the Vicuna
    template (`VICUNA_TEMPLATE`)."""
    if family not in FAMILIES or (vicuna and family != "llama"):
        raise ValueError(f"family must be one of {sorted(FAMILIES)} (llama for vicuna), got {family!r}")
    if hidden_size % num_heads or num_heads % num_kv_heads or (hidden_size // num_heads) % 2:
        raise ValueError("heads must divide hidden_size, kv heads the heads, and head_dim must be even")
    if vicuna:
        out, tok, ids = _tokenized_folder(out_dir, corpus, 600, VICUNA_TOKENS, VICUNA_TEMPLATE)
        ids = _write_vicuna_tokenizer(out, ids)
    else:
        out, tok, ids = _tokenized_folder(out_dir, corpus, 600, TOKENS[family], CHATML_TEMPLATE)
        ids = (_write_qwen2_tokenizer if family == "qwen2" else _write_llama_tokenizer)(out, ids)
    (out / "chat_template.json").unlink()  # LM folders keep the template in tokenizer_config.json only
    # fmt: off
    config = {
        "architectures": [FAMILIES[family]], "model_type": family, "bos_token_id": ids["bos"],
        "eos_token_id": ids["eos"], "hidden_act": "silu", "hidden_size": hidden_size,
        "intermediate_size": intermediate_size, "num_hidden_layers": num_layers, "num_attention_heads": num_heads,
        "num_key_value_heads": num_kv_heads, "attention_dropout": 0.0, "initializer_range": 0.02,
        "max_position_embeddings": MAX_LENGTH, "tie_word_embeddings": tie_word_embeddings,
        "torch_dtype": "float32", "use_cache": True, "vocab_size": _model_vocab_size(tok),
    }
    if family == "qwen2":
        config.update({"rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "max_window_layers": num_layers,
                       "sliding_window": MAX_LENGTH, "use_sliding_window": False})
    else:
        config.update({"rms_norm_eps": 1e-5, "rope_theta": 500000.0, "attention_bias": False, "mlp_bias": False,
                       "head_dim": hidden_size // num_heads, "pretraining_tp": 1, "pad_token_id": ids["pad"]})
    # fmt: on
    write_json(config, out / "config.json")
    generation = {"bos_token_id": ids["bos"], "eos_token_id": ids["eos"], "pad_token_id": ids["pad"]}
    write_json({**generation, "do_sample": False}, out / "generation_config.json")
    weights = _random_weights(_lm_weight_shapes(config, qkv_bias=family == "qwen2"), seed)
    save_file(weights, str(out / "model.safetensors"), metadata={"format": "pt"})
    return out


def build_tiny_llava(
    out_dir: str | Path,
    *,
    language: Literal["qwen2", "llama"] = "qwen2",
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 128,
    vision_hidden: int = 32,
    vision_depth: int = 2,
    vision_heads: int = 2,
    seed: int = 0,
    vicuna: bool = False,
) -> Path:
    """A tiny LLaVA folder made as a user makes one: a CLIP tower and an LM, joined by `build_llava` (the keyword
    names follow `build_tiny_qwen2_5_vl`, so one size table serves every family). `vicuna`: a Llama LM laid out as
    llava-hf's (see `build_tiny_causal_lm`)."""
    import tempfile

    from paddlemix.models.llava.build import build_llava

    with tempfile.TemporaryDirectory() as parts:
        clip = build_tiny_clip_vision(
            Path(parts) / "clip", hidden_size=vision_hidden, num_layers=vision_depth, num_heads=vision_heads, seed=seed
        )
        lm = build_tiny_causal_lm(
            Path(parts) / "lm",
            language,
            hidden_size=hidden_size,
            num_layers=num_layers,
            num_heads=num_heads,
            num_kv_heads=num_kv_heads,
            intermediate_size=intermediate_size,
            seed=seed + 1,
            vicuna=vicuna,
        )
        return build_llava(clip, lm, out_dir, seed=seed)
