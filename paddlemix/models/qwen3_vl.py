"""Qwen3-VL through paddleformers: a ViT with learned position table, a patch-merger projector plus DeepStack
mergers that feed vision features into the first language-model layers, and a Qwen3 language model.

paddleformers 1.2's default `Qwen3VLForConditionalGeneration` needs `paddlefleet`; the `...Deprecated` class of
the same module needs nothing more and matches Hugging Face transformers 4.57 (tests/parity/).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from paddlemix.models import qwen_vl_common
from paddlemix.models.adapter import ModelAdapter
from paddlemix.models.hf_layout import LM_LORA_TARGETS, to_hf_layout
from paddlemix.models.qwen_vl_common import SHARED_ADAPTER_FIELDS, mrope_positions
from paddlemix.processors.video_tokens import QWEN3_VIDEO

_PADDLEFORMERS = "paddleformers.transformers.qwen3_vl"


def to_hf_state_dict(state: dict[str, np.ndarray], config: Any) -> dict[str, np.ndarray]:
    """Paddle parameters -> Hugging Face Qwen3-VL tensors; the names are already HF's (`model.visual.*`,
    `model.language_model.*`, `lm_head.weight`), only the layouts differ."""
    return to_hf_layout(state, config, lambda name: name)


def positions(config: Any, input_ids: np.ndarray, grid_thw: np.ndarray | None, **video: Any) -> np.ndarray:
    """3-D (interleaved) mRoPE position ids [3, L] of one sample, by the model's own rule."""
    from paddleformers.transformers.qwen3_vl.modeling import Qwen3VLModelDeprecated

    return mrope_positions(Qwen3VLModelDeprecated.get_rope_index, config, input_ids, grid_thw, **video)


def prepare_config(config: Any, device: str) -> None:
    """The Qwen-VL config fixes, and on every device the vision tower's attention per image and video frame
    (`paddlemix.models.vision_attention`): paddleformers' own takes a dense mask over all patches of the batch."""
    from paddlemix.models import vision_attention  # imports Paddle: not at module level (the merge tool needs none)

    qwen_vl_common.prepare_config(config, device)
    vision_attention.select(config.vision_config)


ADAPTER = ModelAdapter(
    model_type="qwen3_vl",
    config_class=f"{_PADDLEFORMERS}:Qwen3VLConfig",
    # paddleformers' Qwen3VLForConditionalGenerationDeprecated, taking images and videos in one batch
    model_class="paddlemix.models.qwen3_vl_model:Qwen3VLForConditionalGeneration",
    processor_class=f"{_PADDLEFORMERS}:Qwen3VLProcessor",
    lora_targets=LM_LORA_TARGETS,
    module_groups={
        "vision": ("model.visual.patch_embed.*", "model.visual.pos_embed.*", "model.visual.blocks.*"),
        # Both the final merger and the DeepStack mergers map vision features into the language model's space.
        "projector": ("model.visual.merger.*", "model.visual.deepstack_merger_list.*"),
        "llm": ("model.language_model.*", "lm_head.*"),
    },
    export_state_dict=to_hf_state_dict,
    positions=positions,
    video_tokens=QWEN3_VIDEO,
    **{**SHARED_ADAPTER_FIELDS, "prepare_config": prepare_config},
)
