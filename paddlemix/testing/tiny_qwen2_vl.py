"""Write a tiny, randomly initialised Qwen2-VL checkpoint in the Hugging Face folder layout.

Same tokenizer, chat template and writers as the Qwen2.5-VL builder in `tiny_model.py`; what differs is Qwen2-VL's
own: the vision config (`embed_dim` is the tower's width, `hidden_size` the language model's; `mlp_ratio`,
QuickGELU), LayerNorms with bias, an fc1/fc2 MLP, a LayerNorm merger, and the original checkpoint names
(`model.*`, `visual.*`, `lm_head.weight`). Two config.json layouts:

- "transformers": what transformers 4.57 writes on save (text fields both at the top level and in `text_config`);
- "release": the flat file of the released Qwen2-VL-2B/7B-Instruct (text fields at the top level only,
  `in_chans`, no `hidden_act` in `vision_config`, mRoPE given as `{"type": "mrope"}`), and its
  preprocessor_config.json, which gives `min_pixels` / `max_pixels` but no `size`.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Literal

import numpy as np

from paddlemix.models.llava.processor import CLIP_MEAN, CLIP_STD
from paddlemix.testing.tiny_model import (
    MAX_LENGTH,
    _check_vl_sizes,
    _image_processor_config,
    _layer_norm,
    _linear,
    _lm_weight_shapes,
    _model_vocab_size,
    _random_weights,
    _tokenized_folder,
    _vision_blocks,
    _write_model,
)


def _vision_weight_shapes(vc: dict) -> dict[str, tuple[int, ...]]:
    """Names and shapes of the vision tower and merger as the released checkpoints store them (`visual.*`)."""
    e, ps = vc["embed_dim"], vc["patch_size"]
    inter = int(e * vc["mlp_ratio"])
    shapes: dict[str, tuple[int, ...]] = {
        "visual.patch_embed.proj.weight": (e, vc.get("in_channels", 3), vc["temporal_patch_size"], ps, ps)
    }

    _vision_blocks(shapes, "visual.blocks.", vc["depth"], e, inter, ("fc1", "fc2"))
    merged = e * vc["spatial_merge_size"] ** 2
    _layer_norm(shapes, "visual.merger.ln_q", e)
    _linear(shapes, "visual.merger.mlp.0", merged, merged)
    _linear(shapes, "visual.merger.mlp.2", vc["hidden_size"], merged)
    return shapes


def _random_norm_scales(weights: dict[str, np.ndarray], seed: int) -> None:
    """Norm scales around 1 instead of exactly 1, so a norm loaded into the wrong place changes the outputs."""
    rng = np.random.default_rng(seed + 1)
    for name, value in weights.items():
        if name.endswith(".weight") and value.ndim == 1:
            weights[name] = (1.0 + rng.normal(0.0, 0.1, size=value.shape)).astype(np.float32)


def build_tiny_qwen2_vl(
    out_dir: str | Path,
    *,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 128,
    vision_hidden: int = 32,
    vision_depth: int = 2,
    vision_heads: int = 2,
    tie_word_embeddings: bool = False,
    config_layout: Literal["transformers", "release"] = "transformers",
    corpus: Iterable[str] | None = None,
    vocab_size: int = 600,
    seed: int = 0,
) -> Path:
    """Write a random-weight Qwen2-VL checkpoint (config, safetensors, trained BPE tokenizer, processor files).

    Keyword arguments match `build_tiny_qwen2_5_vl` (so `DEMO_SIZE` fits both); `vision_hidden` is the tower's
    `embed_dim`. ``config_layout`` picks the config.json layout (see the module docstring).
    """
    _check_vl_sizes(hidden_size, num_heads, num_kv_heads, vision_hidden, vision_heads)
    head_dim = hidden_size // num_heads
    out, tok, ids = _tokenized_folder(out_dir, corpus, vocab_size)
    eot, im_end = ids["<|endoftext|>"], ids["<|im_end|>"]
    hw_section = 3 * (head_dim // 2) // 8  # Qwen2-VL's [16, 24, 24] split of head_dim / 2, scaled down
    section = [head_dim // 2 - 2 * hw_section, hw_section, hw_section]
    release = config_layout == "release"
    # fmt: off
    text = {
        "vocab_size": _model_vocab_size(tok), "hidden_size": hidden_size, "intermediate_size": intermediate_size,
        "num_hidden_layers": num_layers, "num_attention_heads": num_heads, "num_key_value_heads": num_kv_heads,
        "hidden_act": "silu", "max_position_embeddings": MAX_LENGTH, "max_window_layers": num_layers,
        "sliding_window": MAX_LENGTH, "use_sliding_window": False, "initializer_range": 0.02, "rms_norm_eps": 1e-6,
        "use_cache": True, "rope_theta": 1000000.0, "attention_dropout": 0.0,
        "rope_scaling": ({"type": "mrope", "mrope_section": section} if release
                         else {"type": "default", "mrope_section": section, "rope_type": "default"}),
        "bos_token_id": eot, "eos_token_id": im_end, "tie_word_embeddings": tie_word_embeddings,
    }
    vision_config = {
        "depth": vision_depth, "embed_dim": vision_hidden, "hidden_size": hidden_size, "mlp_ratio": 4,
        "num_heads": vision_heads, "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2,
    }
    if release:
        vision_config.update({"in_chans": 3, "spatial_patch_size": 14})
    else:
        vision_config.update({"in_channels": 3, "hidden_act": "quick_gelu", "initializer_range": 0.02,
                              "model_type": "qwen2_vl"})
    config = {
        "architectures": ["Qwen2VLForConditionalGeneration"], "model_type": "qwen2_vl", **text,
        "vision_start_token_id": ids["<|vision_start|>"], "vision_end_token_id": ids["<|vision_end|>"],
        "vision_token_id": ids["<|vision_pad|>"], "image_token_id": ids["<|image_pad|>"],
        "video_token_id": ids["<|video_pad|>"], "torch_dtype": "float32", "vision_config": vision_config,
    }
    if not release:
        config["text_config"] = {**text, "model_type": "qwen2_vl_text", "layer_types": ["full_attention"] * num_layers}
        config["transformers_version"] = "4.57.1"
    # fmt: on
    shapes = {**_lm_weight_shapes(config), **_vision_weight_shapes({"in_channels": 3, **vision_config})}
    weights = _random_weights(shapes, seed, bias_std=0.02)
    _random_norm_scales(weights, seed)
    preprocessor = _image_processor_config("Qwen2VLProcessor", 14, CLIP_MEAN, CLIP_STD)
    if release:
        del preprocessor["size"]
    return _write_model(out, config, preprocessor, ids, weights)
