"""Write a tiny, randomly initialised Qwen3-VL checkpoint in the Hugging Face folder layout (transformers 4.57).

Same tokenizer and writers as the Qwen2.5-VL builder in `tiny_model.py`; what differs is Qwen3-VL's own: nested
`text_config` / `vision_config`, interleaved mRoPE, q/k norms, a learned vision position table, DeepStack mergers,
16-pixel patches, a video processor config of its own, its chat template (no default system turn) and its
checkpoint names (`model.visual.*`, `model.language_model.*`, `lm_head.weight`).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from paddlemix.testing.tiny_model import (
    ADDED_TOKENS,
    MAX_LENGTH,
    _check_vl_sizes,
    _image_processor_config,
    _layer_norm,
    _linear,
    _model_vocab_size,
    _random_weights,
    _tokenized_folder,
    _vision_blocks,
    _write_model,
)
from paddlemix.utils.io import write_json

# Qwen3-VL's tokenizer adds these after Qwen2.5-VL's tokens (ordinary added tokens, not special).
ADDED_TOKENS_QWEN3 = (
    *ADDED_TOKENS,
    *((t, False) for t in ("<tool_response>", "</tool_response>", "<think>", "</think>")),
)
# Qwen3-VL's chat format for system, user and assistant turns with text, image and video parts: unlike Qwen2.5-VL
# there is no default system turn, and whitespace control keeps the template's own layout out of the output.
CHAT_TEMPLATE = r"""{%- set image_count = namespace(value=0) -%}
{%- set video_count = namespace(value=0) -%}
{%- for message in messages -%}
    {{- '<|im_start|>' + message['role'] + '\n' -}}
    {%- if message['content'] is string -%}
        {{- message['content'] -}}
    {%- else -%}
        {%- for part in message['content'] -%}
            {%- if message['role'] == 'user' and (part['type'] == 'image' or 'image' in part or 'image_url' in part) -%}
                {%- set image_count.value = image_count.value + 1 -%}
                {%- if add_vision_id -%}{{- 'Picture ' ~ image_count.value ~ ': ' -}}{%- endif -%}
                {{- '<|vision_start|><|image_pad|><|vision_end|>' -}}
            {%- elif message['role'] == 'user' and (part['type'] == 'video' or 'video' in part) -%}
                {%- set video_count.value = video_count.value + 1 -%}
                {%- if add_vision_id -%}{{- 'Video ' ~ video_count.value ~ ': ' -}}{%- endif -%}
                {{- '<|vision_start|><|video_pad|><|vision_end|>' -}}
            {%- elif 'text' in part -%}
                {{- part['text'] -}}
            {%- endif -%}
        {%- endfor -%}
    {%- endif -%}
    {{- '<|im_end|>\n' -}}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{- '<|im_start|>assistant\n' -}}
{%- endif -%}"""
IMAGE_MEAN = IMAGE_STD = [0.5, 0.5, 0.5]


def _weight_shapes(cfg: dict) -> dict[str, tuple[int, ...]]:
    """Parameter names and shapes as transformers 4.57 saves Qwen3VLForConditionalGeneration."""
    tc, vc = cfg["text_config"], cfg["vision_config"]
    v, h, inter, hd = tc["vocab_size"], tc["hidden_size"], tc["intermediate_size"], tc["head_dim"]
    q, kv = tc["num_attention_heads"] * hd, tc["num_key_value_heads"] * hd
    lm = "model.language_model."
    shapes: dict[str, tuple[int, ...]] = {lm + "embed_tokens.weight": (v, h)}
    for i in range(tc["num_hidden_layers"]):
        p = f"{lm}layers.{i}."
        shapes.update({p + "input_layernorm.weight": (h,), p + "post_attention_layernorm.weight": (h,)})
        shapes.update({p + "self_attn.q_proj.weight": (q, h), p + "self_attn.k_proj.weight": (kv, h)})
        shapes.update({p + "self_attn.v_proj.weight": (kv, h), p + "self_attn.o_proj.weight": (h, q)})
        shapes.update({p + "self_attn.q_norm.weight": (hd,), p + "self_attn.k_norm.weight": (hd,)})
        shapes.update({p + "mlp.gate_proj.weight": (inter, h), p + "mlp.up_proj.weight": (inter, h)})
        shapes[p + "mlp.down_proj.weight"] = (h, inter)
    shapes[lm + "norm.weight"] = (h,)
    if not cfg["tie_word_embeddings"]:
        shapes["lm_head.weight"] = (v, h)

    vh, vi, ps = vc["hidden_size"], vc["intermediate_size"], vc["patch_size"]
    shapes["model.visual.patch_embed.proj.weight"] = (vh, vc["in_channels"], vc["temporal_patch_size"], ps, ps)
    shapes["model.visual.patch_embed.proj.bias"] = (vh,)
    shapes["model.visual.pos_embed.weight"] = (vc["num_position_embeddings"], vh)

    _vision_blocks(shapes, "model.visual.blocks.", vc["depth"], vh, vi, ("linear_fc1", "linear_fc2"))
    merged = vh * vc["spatial_merge_size"] ** 2
    mergers = ["model.visual.merger"]
    mergers += [f"model.visual.deepstack_merger_list.{k}" for k in range(len(vc["deepstack_visual_indexes"]))]
    for k, merger in enumerate(mergers):
        _layer_norm(shapes, merger + ".norm", vh if k == 0 else merged)  # the DeepStack mergers norm after merging
        _linear(shapes, merger + ".linear_fc1", merged, merged)
        _linear(shapes, merger + ".linear_fc2", vc["out_hidden_size"], merged)
    return shapes


def build_tiny_qwen3_vl(
    out_dir: str | Path,
    *,
    hidden_size: int = 64,
    num_layers: int = 3,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 128,
    vision_hidden: int = 32,
    vision_depth: int = 3,
    vision_heads: int = 2,
    tie_word_embeddings: bool = False,
    corpus: Iterable[str] | None = None,
    vocab_size: int = 600,
    seed: int = 0,
) -> Path:
    """Write a random-weight Qwen3-VL checkpoint (config, safetensors, trained BPE tokenizer, processor files).

    Keyword arguments match `build_tiny_qwen2_5_vl` (so `DEMO_SIZE` fits both). DeepStack adds the outputs of the
    vision blocks before the last (at most 3, as in the released models) to the first language-model layers but
    never to the last one, where they would reach no answer token and so never be trained.
    """
    _check_vl_sizes(hidden_size, num_heads, num_kv_heads, vision_hidden, vision_heads)
    head_dim = hidden_size // num_heads
    out, tok, ids = _tokenized_folder(out_dir, corpus, vocab_size, ADDED_TOKENS_QWEN3, CHAT_TEMPLATE)
    eot, im_end = ids["<|endoftext|>"], ids["<|im_end|>"]
    hw_section = (head_dim // 2) * 20 // 64  # Qwen3-VL's [24, 20, 20] split of head_dim / 2, scaled down
    # fmt: off
    text_config = {
        "model_type": "qwen3_vl_text", "vocab_size": _model_vocab_size(tok), "hidden_size": hidden_size,
        "intermediate_size": intermediate_size, "num_hidden_layers": num_layers, "num_attention_heads": num_heads,
        "num_key_value_heads": num_kv_heads, "head_dim": head_dim, "hidden_act": "silu",
        "max_position_embeddings": MAX_LENGTH, "initializer_range": 0.02, "rms_norm_eps": 1e-6, "use_cache": True,
        "tie_word_embeddings": tie_word_embeddings, "rope_theta": 5000000.0, "attention_bias": False,
        "attention_dropout": 0.0, "bos_token_id": eot, "eos_token_id": im_end, "dtype": "float32",
        "rope_scaling": {"rope_type": "default", "mrope_interleaved": True,
                         "mrope_section": [head_dim // 2 - 2 * hw_section, hw_section, hw_section]},
    }
    vision_config = {
        "model_type": "qwen3_vl", "depth": vision_depth, "hidden_size": vision_hidden,
        "hidden_act": "gelu_pytorch_tanh", "intermediate_size": 2 * vision_hidden, "num_heads": vision_heads,
        "in_channels": 3, "patch_size": 16, "spatial_merge_size": 2, "temporal_patch_size": 2,
        "out_hidden_size": hidden_size, "num_position_embeddings": 256, "initializer_range": 0.02,
        "deepstack_visual_indexes": list(range(min(vision_depth - 1, num_layers - 1, 3))),
    }
    config = {
        "architectures": ["Qwen3VLForConditionalGeneration"], "model_type": "qwen3_vl",
        "text_config": text_config, "vision_config": vision_config, "tie_word_embeddings": tie_word_embeddings,
        "image_token_id": ids["<|image_pad|>"], "video_token_id": ids["<|video_pad|>"],
        "vision_start_token_id": ids["<|vision_start|>"], "vision_end_token_id": ids["<|vision_end|>"],
        "dtype": "float32",
    }
    # fmt: on
    preprocessor = _image_processor_config("Qwen3VLProcessor", 16, IMAGE_MEAN, IMAGE_STD)
    video = {**preprocessor, "video_processor_type": "Qwen3VLVideoProcessor", "fps": 2, "do_sample_frames": True}
    del video["image_processor_type"]
    write_json(video, out / "video_preprocessor_config.json")
    weights = _random_weights(_weight_shapes(config), seed, bias_std=0.02)
    return _write_model(out, config, preprocessor, ids, weights)
