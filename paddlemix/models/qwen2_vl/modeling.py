"""Qwen2-VL in Paddle: paddleformers' Qwen2.5-VL language side with this toolkit's Qwen2-VL vision tower.

paddleformers 1.2 ships Qwen2-VL's processors but no Qwen2-VL model. The language side is the same in both
releases (a Qwen2 decoder with 3-D mRoPE, `Qwen2_5_VLTextModel`), and so are the embedding of image features,
the loss and generation; only the vision tower (vision.py) and the temporal position of video frames differ.
Parameter names match Qwen2.5-VL's (`model.visual.*`, `model.language_model.*`, `lm_head.*`), so the checkpoint
name mapping of the Qwen-VL families applies unchanged.
"""

from __future__ import annotations

from typing import Any

import paddle
from paddleformers.nn.criterion.interface import CriterionLayer
from paddleformers.nn.lm_head import LMHead
from paddleformers.transformers.qwen2_5_vl.configuration import Qwen2_5_VLConfig, Qwen2_5_VLTextConfig
from paddleformers.transformers.qwen2_5_vl.modeling import (
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLModel,
    Qwen2_5_VLPretrainedModel,
    Qwen2_5_VLTextModel,
)

from paddlemix.models.qwen2_vl.vision import Qwen2VisionTransformer, Qwen2VLVisionConfig


class Qwen2VLConfig(Qwen2_5_VLConfig):
    """Hugging Face's `Qwen2VLConfig`: a Qwen2.5-VL text config (read from `text_config`, or from the top-level
    fields of the released checkpoints' flat config.json) and a `Qwen2VLVisionConfig`."""

    model_type = "qwen2_vl"
    sub_configs = {"vision_config": Qwen2VLVisionConfig, "text_config": Qwen2_5_VLTextConfig}


class Qwen2VLModel(Qwen2_5_VLModel):
    """Vision tower + language model without head; forward, image embedding and positions are Qwen2.5-VL's."""

    config_class = Qwen2VLConfig

    def __init__(self, config: Qwen2VLConfig):
        # Qwen2_5_VLModel.__init__ would build (and randomly initialise) a Qwen2.5-VL tower first; build ours only.
        Qwen2_5_VLPretrainedModel.__init__(self, config)
        self.visual = Qwen2VisionTransformer(config.vision_config)
        self.language_model = Qwen2_5_VLTextModel._from_config(config.text_config)
        self.rope_deltas = None

    def get_rope_index(
        self,
        input_ids: paddle.Tensor | None = None,
        image_grid_thw: paddle.Tensor | None = None,
        video_grid_thw: paddle.Tensor | None = None,
        second_per_grid_ts: paddle.Tensor | None = None,
        attention_mask: paddle.Tensor | None = None,
    ) -> tuple[paddle.Tensor, paddle.Tensor]:
        """3-D mRoPE position ids [3, B, L] and per-row deltas [B, 1] by Qwen2-VL's rule.

        It is Qwen2.5-VL's rule except for video frames, which Qwen2-VL numbers 0, 1, 2, ... whatever the frame
        rate: one second per temporal step (here) times one token per second (`Qwen2VLVisionConfig`). It reads only
        `self.config`, so the packing code can call it with a stand-in `self`.
        """
        if video_grid_thw is not None:
            second_per_grid_ts = paddle.ones([len(video_grid_thw)], dtype="float32")
        return Qwen2_5_VLModel.get_rope_index(
            self, input_ids, image_grid_thw, video_grid_thw, second_per_grid_ts, attention_mask
        )


class Qwen2VLForConditionalGeneration(Qwen2_5_VLForConditionalGeneration):
    """Qwen2-VL with the LM head; forward (logits, loss), generation and weight tying are Qwen2.5-VL's."""

    config_class = Qwen2VLConfig

    def __init__(self, config: Qwen2VLConfig, *args: Any, **kwargs: Any):
        # The parent's body with Qwen2VLModel in place of Qwen2_5_VLModel.
        Qwen2_5_VLPretrainedModel.__init__(self, config, *args, **kwargs)
        self.model = Qwen2VLModel(config)
        self.lm_head = LMHead(config.text_config)
        self.criterion = CriterionLayer(config.text_config)
        self.tie_weights()
