"""Weight layouts: paddleformers keeps Linear weights as [in, out] and fuses q/k/v and gate/up in its language
models; Hugging Face checkpoints store [out, in] and separate tensors. Each family passes its own renaming."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import numpy as np

# 2-D tensors that are tables, not Linear weights: never transposed.
_NOT_LINEAR = ("lm_head.weight", "embed_tokens.weight", "pos_embed.weight", "position_embedding.weight")


def _is_linear(name: str, value: np.ndarray) -> bool:
    return value.ndim == 2 and not name.endswith(_NOT_LINEAR)


def is_linear_weight(name: str, shape: tuple[int, ...] | list[int]) -> bool:
    """Whether a tensor of this name and shape is a Linear layer's weight (2-D, not an embedding or head table)."""
    return len(shape) == 2 and name.endswith(".weight") and not name.endswith(_NOT_LINEAR)


def _split_qkv(value: np.ndarray, heads: int, kv_heads: int, head_dim: int) -> tuple[np.ndarray, ...]:
    """Undo paddleformers' fused QKV: per KV group the last axis holds [q (group*head_dim) | k | v]."""
    group = heads // kv_heads
    blocks = np.split(value, kv_heads, axis=-1)
    parts = [np.split(b, [group * head_dim, (group + 1) * head_dim], axis=-1) for b in blocks]
    return tuple(np.concatenate([p[i] for p in parts], axis=-1) for i in range(3))


def _fuse_qkv(q: np.ndarray, k: np.ndarray, v: np.ndarray, kv_heads: int) -> np.ndarray:
    """Inverse of `_split_qkv`: interleave per KV group as [q (group*head_dim) | k | v] on the last axis."""
    parts = zip(*(np.split(x, kv_heads, axis=-1) for x in (q, k, v)))
    return np.concatenate([np.concatenate(group, axis=-1) for group in parts], axis=-1)


# Default LoRA targets of every family: each Linear of a decoder layer, as Hugging Face names them (the fused
# Paddle layers are adapted per slice; see paddlemix/peft/targets.py for what else `lora_target_modules` accepts).
LM_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

# Module paths that differ between transformers generations, as (4.x path part, regex matching the 4.x and 5.x
# forms): 5.x builds LLaVA's CLIP tower without its `vision_model` level.
GENERATION_NEUTRAL = (("vision_tower.vision_model.", r"vision_tower\.(?:vision_model\.)?"),)


# The top-level modules of CLIP's vision transformer: transformers 5.x saves a `CLIPVisionModel`, and LLaVA's
# `vision_tower`, without the `vision_model.` level above them; 4.x and full CLIP folders keep it.
CLIP_VISION_PARTS = ("embeddings.", "pre_layrnorm.", "encoder.", "post_layernorm.")


def clip_vision_name(name: str) -> str:
    """A CLIP vision checkpoint name of either transformers generation -> 4.x's `vision_model.*` name."""
    return "vision_model." + name if name.startswith(CLIP_VISION_PARTS) else name


def name_for_both(model_type: str | None, name: str) -> str:
    """A checkpoint name of either transformers generation -> the name both load, for folders we write from a
    base's tensors (the merge tool): LLaVA's CLIP names as 4.x writes them, every other name unchanged."""
    tower = "vision_tower."
    if model_type == "llava" and name.startswith(tower):
        return tower + clip_vision_name(name[len(tower) :])
    return name


def both_generations(pattern: str) -> str:
    """A regex over 4.x module paths (parts escaped by `re.escape`) -> one that matches the same modules in
    transformers 4.x's and 5.x's module trees, so PEFT finds an adapter's targets on either."""
    for old, neutral in GENERATION_NEUTRAL:
        pattern = pattern.replace(re.escape(old), neutral)
    return pattern


# paddleformers' fused language-model layers and the Hugging Face layers each one holds, in output order.
FUSED_LAYERS: dict[str, tuple[str, ...]] = {
    "qkv_proj": ("q_proj", "k_proj", "v_proj"),
    "up_gate_proj": ("gate_proj", "up_proj"),
}

# Tensor parallel: the fused layers whose output holds parts that are split one by one. gate/up lie one after the
# other; q/k/v are interleaved per KV group, so one contiguous block per rank holds whole groups (1 part, unlisted).
TENSOR_PARALLEL_PARTS: dict[str, int] = {"up_gate_proj": 2}


def fused_columns(fused: str, config: Any) -> dict[str, np.ndarray]:
    """Which output columns of a fused layer belong to each Hugging Face layer: `{"q_proj": int64 array, ...}`.

    Computed by running the layout code itself (`_split_qkv`, the gate/up split) on column numbers, so the slices
    of LoRA and of checkpoint conversion cannot disagree. `fused` is a key of FUSED_LAYERS.
    """
    text = config.text_config
    heads, kv_heads = text.num_attention_heads, text.num_key_value_heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    if fused == "qkv_proj":
        columns = np.arange((heads + 2 * kv_heads) * head_dim)[None]
        parts = _split_qkv(columns, heads, kv_heads, head_dim)
    else:
        parts = np.split(np.arange(2 * text.intermediate_size)[None], 2, axis=-1)
    return {name: part[0].astype("int64") for name, part in zip(FUSED_LAYERS[fused], parts)}


def to_hf_layout(state: dict[str, np.ndarray], config: Any, rename: Callable[[str], str]) -> dict[str, np.ndarray]:
    """Paddle parameters -> Hugging Face tensors: split fused q/k/v and gate/up, transpose Linear weights to
    [out, in], and name each tensor with `rename` (Paddle name -> the family's checkpoint name). A head tied to the
    embeddings is left out, as transformers saves it."""
    text = config.text_config
    heads, kv_heads = text.num_attention_heads, text.num_key_value_heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    tied = getattr(text, "tie_word_embeddings", False)
    out: dict[str, np.ndarray] = {}
    for name, value in state.items():
        if tied and name == "lm_head.weight":
            continue
        name = rename(name)
        is_weight = name.endswith(".weight")
        if ".qkv_proj." in name:
            for part, tensor in zip("qkv", _split_qkv(value, heads, kv_heads, head_dim)):
                out[name.replace("qkv_proj", f"{part}_proj")] = tensor.T if is_weight else tensor
        elif ".up_gate_proj." in name:
            gate, up = np.split(value, 2, axis=-1)
            out[name.replace("up_gate_proj", "gate_proj")] = gate.T
            out[name.replace("up_gate_proj", "up_proj")] = up.T
        else:
            out[name] = value.T if _is_linear(name, value) else value
    return {k: np.ascontiguousarray(v) for k, v in out.items()}


def from_hf_layout(
    hf: dict[str, np.ndarray], config: Any, target: set[str], rename: Callable[[str], str]
) -> dict[str, np.ndarray]:
    """Hugging Face checkpoint names and layouts -> this model's parameters (`target` names), inverse of
    `to_hf_layout`: name each tensor with `rename` (checkpoint name -> Paddle name), transpose Linear weights, fuse
    q/k/v and gate/up where the Paddle model fuses them."""
    kv_heads = config.text_config.num_key_value_heads
    out: dict[str, np.ndarray] = {}
    fused: dict[tuple[str, str], dict[str, np.ndarray]] = {}
    for name, value in hf.items():
        name = rename(name)
        stem, _, part = name.rpartition(".")
        layer, _, proj = stem.rpartition(".")
        value = value.T if _is_linear(name, value) else value
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
