"""Qwen2.5-VL through paddleformers: a windowed ViT with a patch-merger projector and a Qwen2 language model."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np

from paddlemix.models.adapter import ModelAdapter


def prepare_config(config: Any, device: str) -> None:
    """Use the unfused RMSNorm where the fused kernel is missing (every device but CUDA GPUs)."""
    if device != "gpu":
        for part in (config.text_config, config.vision_config):
            part.fuse_rms_norm = False


def _split_qkv(value: np.ndarray, heads: int, kv_heads: int, head_dim: int) -> tuple[np.ndarray, ...]:
    """Undo paddleformers' fused QKV: per KV group the last axis holds [q (group*head_dim) | k | v]."""
    group = heads // kv_heads
    blocks = np.split(value, kv_heads, axis=-1)
    parts = [np.split(b, [group * head_dim, (group + 1) * head_dim], axis=-1) for b in blocks]
    return tuple(np.concatenate([p[i] for p in parts], axis=-1) for i in range(3))


def to_hf_state_dict(state: dict[str, np.ndarray], config: Any) -> dict[str, np.ndarray]:
    """Paddle parameter names and layouts -> the Hugging Face checkpoint names every transformers version loads.

    Paddle keeps Linear weights as [in, out] and fuses q/k/v and gate/up; HF stores [out, in] and separate tensors
    under `model.*` (language model) and `visual.*` (vision tower).
    """
    text = config.text_config
    heads, kv_heads = text.num_attention_heads, text.num_key_value_heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    out: dict[str, np.ndarray] = {}
    for name, value in state.items():
        if name.startswith("model.visual."):
            name = name[len("model.") :]
        elif name.startswith("model.language_model."):
            name = "model." + name[len("model.language_model.") :]
        is_weight = name.endswith(".weight")
        if ".qkv_proj." in name:
            for part, tensor in zip("qkv", _split_qkv(value, heads, kv_heads, head_dim)):
                out[name.replace("qkv_proj", f"{part}_proj")] = tensor.T if is_weight else tensor
        elif ".up_gate_proj." in name:
            gate, up = np.split(value, 2, axis=-1)
            out[name.replace("up_gate_proj", "gate_proj")] = gate.T
            out[name.replace("up_gate_proj", "up_proj")] = up.T
        elif value.ndim == 2 and name != "lm_head.weight" and "embed_tokens" not in name:
            out[name] = value.T
        else:
            out[name] = value
    return {k: np.ascontiguousarray(v) for k, v in out.items()}


def _fuse_qkv(q: np.ndarray, k: np.ndarray, v: np.ndarray, kv_heads: int) -> np.ndarray:
    """Inverse of `_split_qkv`: interleave per KV group as [q (group*head_dim) | k | v] on the last axis."""
    parts = zip(*(np.split(x, kv_heads, axis=-1) for x in (q, k, v)))
    return np.concatenate([np.concatenate(group, axis=-1) for group in parts], axis=-1)


def from_hf_state_dict(hf: dict[str, np.ndarray], config: Any, target: set[str]) -> dict[str, np.ndarray]:
    """Hugging Face checkpoint names and layouts -> this model's parameters (`target` names), inverse of
    `to_hf_state_dict`: transpose Linear weights, fuse q/k/v and gate/up where the Paddle model fuses them."""
    kv_heads = config.text_config.num_key_value_heads
    out: dict[str, np.ndarray] = {}
    fused: dict[tuple[str, str], dict[str, np.ndarray]] = {}
    for name, value in hf.items():
        if name.startswith("visual."):
            name = "model." + name
        elif name.startswith("model.") and not name.startswith("model.visual."):
            name = "model.language_model." + name[len("model.") :].removeprefix("language_model.")
        stem, _, part = name.rpartition(".")
        layer, _, proj = stem.rpartition(".")
        is_linear = value.ndim == 2 and name != "lm_head.weight" and "embed_tokens" not in name
        value = value.T if is_linear else value
        if proj in ("q_proj", "k_proj", "v_proj") and f"{layer}.qkv_proj.{part}" in target:
            fused.setdefault((f"{layer}.qkv_proj.{part}", "qkv"), {})[proj[0]] = value
        elif proj in ("gate_proj", "up_proj") and f"{layer}.up_gate_proj.{part}" in target:
            fused.setdefault((f"{layer}.up_gate_proj.{part}", "up_gate"), {})[proj[:-5]] = value
        else:
            out[name] = value
    for (name, kind), p in fused.items():
        both = (p["gate"], p["up"]) if kind == "up_gate" else None
        out[name] = np.concatenate(both, axis=-1) if both else _fuse_qkv(p["q"], p["k"], p["v"], kv_heads)
    if "lm_head.weight" in target and "lm_head.weight" not in out:  # tied embeddings
        out["lm_head.weight"] = out["model.language_model.embed_tokens.weight"]
    return {k: np.ascontiguousarray(v) for k, v in out.items()}


def image_grid(image_processor: Any, width: int, height: int) -> tuple[int, int, int]:
    """The (t, h, w) patch grid the image processor makes of a width x height image (one frame)."""
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

    patch, merge = image_processor.patch_size, image_processor.merge_size
    pixels = image_processor.size or {}
    min_pixels = pixels.get("shortest_edge", image_processor.min_pixels)
    max_pixels = pixels.get("longest_edge", image_processor.max_pixels)
    h, w = smart_resize(height, width, factor=patch * merge, min_pixels=min_pixels, max_pixels=max_pixels)
    return 1, h // patch, w // patch


def positions(config: Any, input_ids: np.ndarray, grid_thw: np.ndarray | None) -> np.ndarray:
    """3-D mRoPE position ids [3, L] of one sample, by the model's own rule (it reads only `self.config`)."""
    import paddle
    from paddleformers.transformers.qwen2_5_vl.modeling import Qwen2_5_VLModel

    ids = paddle.to_tensor(input_ids[None])
    grid = paddle.to_tensor(np.asarray(grid_thw)) if grid_thw is not None and len(grid_thw) else None
    if grid is None:
        return np.tile(np.arange(len(input_ids), dtype="int64"), (3, 1))
    position_ids, _ = Qwen2_5_VLModel.get_rope_index(SimpleNamespace(config=config), ids, grid, None, None, None)
    return position_ids[:, 0].numpy()


ADAPTER = ModelAdapter(
    model_type="qwen2_5_vl",
    config_class="paddleformers.transformers:Qwen2_5_VLConfig",
    model_class="paddleformers.transformers:Qwen2_5_VLForConditionalGeneration",
    processor_class="paddleformers.transformers:Qwen2_5_VLProcessor",
    vision_placeholder="<|vision_start|><|image_pad|><|vision_end|>",
    image_token="<|image_pad|>",
    lora_targets=(
        r"model\.language_model\.layers\.\d+\.self_attn\.(qkv_proj|o_proj)",
        r"model\.language_model\.layers\.\d+\.mlp\.(up_gate_proj|down_proj)",
    ),
    module_groups={
        "vision": ("model.visual.patch_embed.*", "model.visual.blocks.*"),
        "projector": ("model.visual.merger.*",),
        "llm": ("model.language_model.*", "lm_head.*"),
    },
    prepare_config=prepare_config,
    export_state_dict=to_hf_state_dict,
    import_state_dict=from_hf_state_dict,
    image_grid=image_grid,
    positions=positions,
)
