"""Qwen2-VL: a ViT with LayerNorms and a QuickGELU MLP (vision.py), a LayerNorm patch merger as projector and
paddleformers' Qwen2 language model with 3-D mRoPE (modeling.py).

Checkpoints use the original release's names, which every transformers version loads; the Paddle model uses the
nested names of Qwen2.5-VL in paddleformers:

    visual.*               <->  model.visual.*
    model.*                <->  model.language_model.*   (q/k/v and gate/up fused, Linear weights transposed)
    lm_head.weight         <->  lm_head.weight            (absent when tied to the embeddings, as in Qwen2-VL-2B)
"""

from __future__ import annotations

from typing import Any

import numpy as np

from paddlemix.models import qwen2_5_vl
from paddlemix.models.adapter import ModelAdapter
from paddlemix.models.hf_layout import LM_LORA_TARGETS
from paddlemix.models.qwen_vl_common import SHARED_ADAPTER_FIELDS, mrope_positions
from paddlemix.processors.video_tokens import QWEN2_VIDEO

_MODELING = "paddlemix.models.qwen2_vl.modeling"


def positions(config: Any, input_ids: np.ndarray, grid_thw: np.ndarray | None, **video: Any) -> np.ndarray:
    """3-D mRoPE position ids [3, L] of one sample, by the model's own rule."""
    from paddlemix.models.qwen2_vl.modeling import Qwen2VLModel

    return mrope_positions(Qwen2VLModel.get_rope_index, config, input_ids, grid_thw, **video)


def pipeline_parts() -> Any:
    """Qwen2-VL's pipeline stages: its own vision tower and rope rule on Qwen2.5-VL's language-model layers."""
    from paddleformers.transformers.qwen2_5_vl import modeling as m

    from paddlemix.distributed.pipeline import PipelineParts
    from paddlemix.models.qwen2_vl.modeling import Qwen2VisionTransformer, Qwen2VLModel

    return PipelineParts(
        model_class=Qwen2VLModel,
        text_model_class=m.Qwen2_5_VLTextModel,
        decoder_layer_class=m.Qwen2_5_VLDecoderLayer,
        rotary_class=m.Qwen2_5_VLRotaryEmbedding,
        build_vision=Qwen2VisionTransformer,
    )


ADAPTER = ModelAdapter(
    model_type="qwen2_vl",
    config_class=f"{_MODELING}:Qwen2VLConfig",
    model_class=f"{_MODELING}:Qwen2VLForConditionalGeneration",
    processor_class="paddleformers.transformers.qwen2_vl:Qwen2VLProcessor",
    lora_targets=LM_LORA_TARGETS,
    module_groups={
        "vision": ("model.visual.patch_embed.*", "model.visual.blocks.*"),
        "projector": ("model.visual.merger.*",),
        "llm": ("model.language_model.*", "lm_head.*"),
    },
    # Same checkpoint names and layouts as Qwen2.5-VL's original release.
    export_state_dict=qwen2_5_vl.to_hf_state_dict,
    positions=positions,
    pipeline=pipeline_parts,
    video_tokens=QWEN2_VIDEO,
    **SHARED_ADAPTER_FIELDS,
)
