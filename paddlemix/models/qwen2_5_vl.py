"""Qwen2.5-VL through paddleformers: a windowed ViT with a patch-merger projector and a Qwen2 language model."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from paddlemix.models.adapter import ModelAdapter
from paddlemix.models.hf_layout import LM_LORA_TARGETS, to_hf_layout
from paddlemix.models.qwen_vl_common import SHARED_ADAPTER_FIELDS, mrope_positions
from paddlemix.processors.video_tokens import QWEN2_5_VIDEO

if TYPE_CHECKING:
    from paddlemix.distributed.pipeline import PipelineParts


def hf_name(name: str) -> str:
    """Paddle parameter name -> Qwen2.5-VL checkpoint name: `model.*` (language model) and `visual.*` (vision)."""
    if name.startswith("model.visual."):
        return name[len("model.") :]
    if name.startswith("model.language_model."):
        return "model." + name[len("model.language_model.") :]
    return name


def to_hf_state_dict(state: dict[str, np.ndarray], config: Any) -> dict[str, np.ndarray]:
    """Paddle parameter names and layouts -> the Hugging Face checkpoint names every transformers version loads."""
    return to_hf_layout(state, config, hf_name)


def positions(config: Any, input_ids: np.ndarray, grid_thw: np.ndarray | None, **video: Any) -> np.ndarray:
    """3-D mRoPE position ids [3, L] of one sample, by the model's own rule."""
    from paddleformers.transformers.qwen2_5_vl.modeling import Qwen2_5_VLModel

    return mrope_positions(Qwen2_5_VLModel.get_rope_index, config, input_ids, grid_thw, **video)


def pipeline_parts() -> PipelineParts:
    """The classes of Qwen2.5-VL's pipeline stages (paddleformers' own layers)."""
    from paddleformers.transformers.qwen2_5_vl import modeling as m

    from paddlemix.distributed.pipeline import PipelineParts

    return PipelineParts(
        model_class=m.Qwen2_5_VLModel,
        text_model_class=m.Qwen2_5_VLTextModel,
        decoder_layer_class=m.Qwen2_5_VLDecoderLayer,
        rotary_class=m.Qwen2_5_VLRotaryEmbedding,
        build_vision=m.Qwen2_5_VisionTransformerPretrainedModel._from_config,
    )


ADAPTER = ModelAdapter(
    model_type="qwen2_5_vl",
    config_class="paddleformers.transformers:Qwen2_5_VLConfig",
    model_class="paddleformers.transformers:Qwen2_5_VLForConditionalGeneration",
    processor_class="paddleformers.transformers:Qwen2_5_VLProcessor",
    lora_targets=LM_LORA_TARGETS,
    module_groups={
        "vision": ("model.visual.patch_embed.*", "model.visual.blocks.*"),
        "projector": ("model.visual.merger.*",),
        "llm": ("model.language_model.*", "lm_head.*"),
    },
    export_state_dict=to_hf_state_dict,
    positions=positions,
    pipeline=pipeline_parts,
    video_tokens=QWEN2_5_VIDEO,
    **SHARED_ADAPTER_FIELDS,
)
