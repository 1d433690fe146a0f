"""LLaVA: a CLIP vision tower + MLP projector + a Qwen2 or Llama language model, in our own Paddle classes.

Checkpoints use the legacy Hugging Face LLaVA names that every transformers version loads (the folder layout is
described in `build.py`); the Paddle model uses transformers 4.57's in-memory names:

    vision_tower.vision_model.*     <->  model.vision_tower.vision_model.*
    multi_modal_projector.*         <->  model.multi_modal_projector.*
    language_model.model.*          <->  model.language_model.*      (q/k/v and gate/up fused where paddleformers
    language_model.lm_head.weight   <->  lm_head.weight                fuses them; Linear weights transposed)

transformers 5.x builds the CLIP tower without its `vision_model` level, in memory and in the files it saves
(`vision_tower.embeddings.*`, `vision_tower.encoder.*`, ...; the language model keeps the legacy names); such names,
and the in-memory names of PEFT adapters made on either generation, are read too. What we write keeps the legacy
names, which both generations load.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from paddlemix.models.adapter import ModelAdapter, prefix_aliases
from paddlemix.models.hf_layout import LM_LORA_TARGETS, from_hf_layout, to_hf_layout

# (Paddle prefix, checkpoint prefix); names in transformers' nested layout (model.*, lm_head.*) load unchanged.
CHECKPOINT_PREFIXES = (
    ("model.vision_tower.", "vision_tower."),
    ("model.multi_modal_projector.", "multi_modal_projector."),
    ("model.language_model.", "language_model.model."),
    ("lm_head.", "language_model.lm_head."),
)
HF_LM_HEAD = "language_model.lm_head.weight"
# PaddleMIX's names of our parameters (our prefix, its prefixes): its LLaVA nests the CLIP tower and the projector
# (an nn.Sequential: Linear, GELU, Linear) inside the language model `llama`; the head is `lm_head` in both.
PADDLEMIX_PREFIXES = (
    ("model.vision_tower.", ("llama.vision_tower.vision_tower.",)),
    ("model.multi_modal_projector.linear_1.", ("llama.mm_projector.0.",)),
    ("model.multi_modal_projector.linear_2.", ("llama.mm_projector.2.",)),
    ("model.language_model.", ("llama.",)),
)


def hf_name(name: str) -> str:
    """Paddle parameter name -> legacy LLaVA checkpoint name."""
    for paddle_prefix, hf_prefix in CHECKPOINT_PREFIXES:
        if name.startswith(paddle_prefix):
            return hf_prefix + name[len(paddle_prefix) :]
    return name


TOWER, CLIP_LEVEL = "model.vision_tower.", "vision_model."


def paddle_name(name: str) -> str:
    """Checkpoint or in-memory name (legacy, nested, or transformers 5.x's CLIP without `vision_model.`) -> Paddle
    parameter name."""
    for paddle_prefix, hf_prefix in CHECKPOINT_PREFIXES:
        if name.startswith(hf_prefix):
            name = paddle_prefix + name[len(hf_prefix) :]
            break
    if name.startswith(TOWER) and not name.startswith(TOWER + CLIP_LEVEL):
        return TOWER + CLIP_LEVEL + name[len(TOWER) :]
    return name


def to_hf_state_dict(state: dict[str, np.ndarray], config: Any) -> dict[str, np.ndarray]:
    """Paddle parameters -> checkpoint tensors; a head tied to the embeddings is not written (HF re-ties it)."""
    out = to_hf_layout(state, config, hf_name)
    if config.text_config.tie_word_embeddings:
        out.pop(HF_LM_HEAD, None)
    return out


def import_state_dict(hf: dict[str, np.ndarray], config: Any, target: set[str]) -> dict[str, np.ndarray]:
    """Checkpoint tensors -> Paddle parameters (`target` names); inverse of `to_hf_state_dict`."""
    return from_hf_layout(hf, config, target, paddle_name)


def prepare_config(config: Any, device: str) -> None:
    """Use the unfused RMSNorm of the language model where the fused kernel is missing (every device but GPUs)."""
    if device != "gpu":
        config.text_config.fuse_rms_norm = False


def image_grid(image_processor: Any, width: int, height: int) -> tuple[int, int, int]:
    """(1, H/patch, W/patch) of the processed image: fixed by the crop size when the processor center-crops."""
    return image_processor.image_grid(width, height)


def image_token_layout(processor: Any) -> tuple[int, int]:
    """One token per patch, plus the class token unless the "default" strategy drops it (HF LlavaProcessor's rule,
    from the processor's `num_additional_image_tokens` and `vision_feature_select_strategy`)."""
    extra = processor.num_additional_image_tokens - (processor.vision_feature_select_strategy == "default")
    return 1, int(extra)


def positions(config: Any, input_ids: np.ndarray, grid_thw: np.ndarray | None) -> np.ndarray:
    """Plain 1-D positions [1, L] of one sample: images take ordinary token positions."""
    return np.arange(len(input_ids), dtype="int64")[None]


ADAPTER = ModelAdapter(
    model_type="llava",
    config_class="paddlemix.models.llava.modeling:LlavaConfig",
    model_class="paddlemix.models.llava.modeling:LlavaForConditionalGeneration",
    processor_class="paddlemix.models.llava.processor:LlavaProcessorMIX",
    vision_placeholder="<image>",
    image_token="<image>",
    lora_targets=LM_LORA_TARGETS,
    module_groups={
        "vision": ("model.vision_tower.*",),
        "projector": ("model.multi_modal_projector.*",),
        "llm": ("model.language_model.*", "lm_head.*"),
    },
    prepare_config=prepare_config,
    export_state_dict=to_hf_state_dict,
    import_state_dict=import_state_dict,
    image_grid=image_grid,
    positions=positions,
    image_token_layout=image_token_layout,
    parameter_name=paddle_name,
    paddlemix_names=prefix_aliases(PADDLEMIX_PREFIXES),
)
