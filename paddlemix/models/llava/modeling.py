"""LLaVA in Paddle: a CLIP vision tower, a two-layer MLP projector and any paddleformers causal LM (Qwen2, Llama).

Parameter names follow Hugging Face transformers 4.57's in-memory layout (`model.vision_tower.*`,
`model.multi_modal_projector.*`, `model.language_model.*`, `lm_head.*`); the checkpoint names on disk are the legacy
ones (see paddlemix/models/llava/__init__.py for the mapping). Image features replace the embeddings of the
`<image>` tokens in order, one token per visual feature.
"""

from __future__ import annotations

import contextlib
import sys
import types
from collections.abc import Iterator
from typing import Any

import paddle
import paddle.nn.functional as F
from paddle import nn
from paddleformers.nn.lm_head import LMHead
from paddleformers.transformers.configuration_utils import PretrainedConfig
from paddleformers.transformers.llama.configuration import LlamaConfig
from paddleformers.transformers.model_outputs import CausalLMOutputWithPast
from paddleformers.transformers.model_utils import PretrainedModel
from paddleformers.transformers.qwen2.configuration import Qwen2Config
from paddleformers.utils.import_utils import is_paddlefleet_available

from paddlemix.models.adapter import import_object
from paddlemix.models.llava.clip import CLIPVisionConfig, CLIPVisionModel, activation
from paddlemix.processors.sample_processor import IGNORE_INDEX

# Language models a LLaVA can wrap, by their config.json model_type: (config class, base model without head).
TEXT_MODELS: dict[str, tuple[type[PretrainedConfig], str]] = {
    "qwen2": (Qwen2Config, "paddleformers.transformers.qwen2.modeling:Qwen2Model"),
    "llama": (LlamaConfig, "paddleformers.transformers.llama.modeling:LlamaModel"),
}
SELECT_STRATEGIES = ("default", "full")
GPT_PROVIDER = "paddleformers.transformers.gpt_provider"


@contextlib.contextmanager
def _gpt_provider_stand_in() -> Iterator[None]:
    """paddleformers' qwen2 module imports `gpt_provider` for its paddlefleet-only `Qwen2ForCausalLM`, and that
    import raises without paddlefleet. During the import only, a stand-in base class takes its place (the base
    `Qwen2Model` never uses it); afterwards `gpt_provider` imports (and fails) exactly as before."""
    if is_paddlefleet_available() or GPT_PROVIDER in sys.modules:
        yield
        return
    stand_in = types.ModuleType(GPT_PROVIDER)
    stand_in.GPTModelProvider = type("GPTModelProvider", (), {})
    sys.modules[GPT_PROVIDER] = stand_in
    try:
        yield
    finally:
        sys.modules.pop(GPT_PROVIDER, None)


def text_model_class(model_type: str) -> type[nn.Layer]:
    """The paddleformers base language model (no head) for a text config's `model_type`."""
    with _gpt_provider_stand_in():
        return import_object(TEXT_MODELS[model_type][1])


def text_config_from_dict(values: dict[str, Any]) -> PretrainedConfig:
    """The paddleformers config of the wrapped language model, chosen by its `model_type`."""
    model_type = values.get("model_type", "llama")
    if model_type not in TEXT_MODELS:
        raise ValueError(
            f'text_config.model_type "{model_type}" is not supported for LLaVA; supported: '
            f"{', '.join(sorted(TEXT_MODELS))}."
        )
    # transformers leaves out values equal to its defaults; its Qwen2 and Llama configs default to untied heads,
    # paddleformers' base config to tied ones.
    return TEXT_MODELS[model_type][0](**{"tie_word_embeddings": False, **values})


class LlavaConfig(PretrainedConfig):
    """Hugging Face's `LlavaConfig` fields: vision and text sub-configs plus how image features reach the LM."""

    model_type = "llava"

    def __init__(
        self,
        vision_config: dict | PretrainedConfig | None = None,
        text_config: dict | PretrainedConfig | None = None,
        image_token_index: int = 32000,
        projector_hidden_act: str = "gelu",
        vision_feature_select_strategy: str = "default",
        vision_feature_layer: int | list[int] = -2,
        image_seq_length: int = 576,
        multimodal_projector_bias: bool = True,
        **kwargs: Any,
    ):
        image_token_index = kwargs.pop("image_token_id", image_token_index)  # the name transformers 5 writes
        super().__init__(**kwargs)
        if vision_feature_select_strategy not in SELECT_STRATEGIES:
            raise ValueError(
                f'vision_feature_select_strategy "{vision_feature_select_strategy}" is not one of {SELECT_STRATEGIES}'
            )
        if isinstance(vision_config, dict):
            vision_config = CLIPVisionConfig(**vision_config)
        if isinstance(text_config, dict):
            text_config = text_config_from_dict(text_config)
        self.vision_config = vision_config if vision_config is not None else CLIPVisionConfig()
        self.text_config = text_config if text_config is not None else LlamaConfig()
        self.image_token_index = image_token_index
        self.projector_hidden_act = projector_hidden_act
        self.vision_feature_select_strategy = vision_feature_select_strategy
        self.vision_feature_layer = vision_feature_layer
        self.image_seq_length = image_seq_length
        self.multimodal_projector_bias = multimodal_projector_bias

    @property
    def feature_layers(self) -> list[int]:
        """`vision_feature_layer` as a list (one int or several whose features are concatenated)."""
        layer = self.vision_feature_layer
        return [layer] if isinstance(layer, int) else list(layer)


class LlavaMultiModalProjector(nn.Layer):
    """Vision features -> LM embeddings: linear_1, activation, linear_2."""

    def __init__(self, config: LlavaConfig):
        super().__init__()
        vision = config.vision_config.hidden_size * len(config.feature_layers)
        text = config.text_config.hidden_size
        bias = None if config.multimodal_projector_bias else False
        self.linear_1 = nn.Linear(vision, text, bias_attr=bias)
        self.act = activation(config.projector_hidden_act)
        self.linear_2 = nn.Linear(text, text, bias_attr=bias)

    def forward(self, features: paddle.Tensor) -> paddle.Tensor:
        return self.linear_2(self.act(self.linear_1(features)))


class LlavaModel(nn.Layer):
    """Vision tower, projector and the language model without its head."""

    def __init__(self, config: LlavaConfig):
        super().__init__()
        self.config = config
        self.vision_tower = CLIPVisionModel(config.vision_config)
        self.multi_modal_projector = LlavaMultiModalProjector(config)
        self.language_model = text_model_class(config.text_config.model_type)(config.text_config)

    def image_features(self, pixel_values: paddle.Tensor) -> paddle.Tensor:
        """Projected features of each image, concatenated in image order: [images * tokens_per_image, hidden]."""
        states = self.vision_tower.hidden_states(pixel_values, self.config.feature_layers)
        if self.config.vision_feature_select_strategy == "default":
            states = [s[:, 1:] for s in states]  # drop the class token
        features = self.multi_modal_projector(paddle.concat(states, axis=-1))  # [N, tokens, hidden]
        return features.reshape([-1, features.shape[-1]])

    def embed(self, input_ids: paddle.Tensor, pixel_values: paddle.Tensor | None = None) -> paddle.Tensor:
        """Token embeddings [B, L, hidden] with the `<image>` positions replaced by the image features in order."""
        embeds = self.language_model.embed_tokens(input_ids)
        is_image = input_ids == self.config.image_token_index
        n_tokens = int(is_image.astype("int64").sum())
        if pixel_values is None and n_tokens == 0:
            return embeds
        features = self.image_features(pixel_values) if pixel_values is not None else None
        n_features = 0 if features is None else features.shape[0]
        if n_tokens != n_features:
            images = 0 if pixel_values is None else pixel_values.shape[0]
            raise ValueError(
                f"input_ids hold {n_tokens} image tokens (id {self.config.image_token_index}) but the {images} "
                f"images give {n_features} visual features ({n_features // max(images, 1)} per image): each <image> "
                "placeholder must expand to one image token per visual feature, and every image needs its placeholder."
            )
        flat = embeds.reshape([-1, embeds.shape[-1]])
        index = paddle.nonzero(is_image.reshape([-1])).squeeze(-1)
        flat = paddle.scatter(flat, index, features.astype(flat.dtype), overwrite=True)
        return flat.reshape(embeds.shape)


def lm_loss(logits: paddle.Tensor, labels: paddle.Tensor) -> paddle.Tensor:
    """Mean cross-entropy over the positions whose (already shifted) label is not IGNORE_INDEX."""
    logits = logits.astype("float32").reshape([-1, logits.shape[-1]])
    labels = labels.reshape([-1])
    losses = F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX, reduction="none")
    count = (labels != IGNORE_INDEX).astype("float32").sum()
    return losses.sum() / paddle.clip(count, min=1.0)


class LlavaForConditionalGeneration(PretrainedModel):
    """LLaVA with the LM head at the top level (`lm_head`), so the chunked loss and LoRA find it as for Qwen-VL."""

    config_class = LlavaConfig
    base_model_prefix = "model"

    def __init__(self, config: LlavaConfig):
        super().__init__(config)
        self.model = LlavaModel(config)
        self.lm_head = LMHead(config.text_config)
        if config.text_config.tie_word_embeddings:
            self.lm_head.weight = self.model.language_model.embed_tokens.weight

    def get_input_embeddings(self) -> nn.Layer:
        return self.model.language_model.embed_tokens

    def can_generate(self) -> bool:
        """True, so paddleformers' loader keeps the folder's `generation_config`; decoding itself runs in
        paddlemix/inference/decoding.py, which drives this forward with a KV cache."""
        return True

    def forward(
        self,
        input_ids: paddle.Tensor,
        labels: paddle.Tensor | None = None,
        attention_mask: paddle.Tensor | None = None,
        pixel_values: paddle.Tensor | None = None,
        image_grid_thw: paddle.Tensor | None = None,
        position_ids: paddle.Tensor | None = None,
        attn_mask_startend_row_indices: paddle.Tensor | None = None,
        past_key_values: Any = None,
        use_cache: bool = False,
        logits_to_keep: int = 0,
    ) -> CausalLMOutputWithPast:
        """Logits [B, L, vocab] and, with labels (already shifted: labels[t] is the target of position t), the loss.

        `image_grid_thw` is accepted for the generic collator; every image has the fixed grid of the vision tower.
        MIXToken packs pass `position_ids` as [1, B, L] and `attn_mask_startend_row_indices` (block-causal mask).
        Decoding passes `use_cache` and then the returned `past_key_values` (the language model's cache) with only
        the new tokens; `attention_mask` then covers cached + new tokens, `logits_to_keep` = n keeps the last n.
        """
        if position_ids is not None and position_ids.ndim == 3:
            if position_ids.shape[0] != 1:
                raise ValueError(f"LLaVA uses one row of position ids, got position_ids of shape {position_ids.shape}")
            position_ids = position_ids[0]
        if attention_mask is not None:
            attention_mask = attention_mask.astype("bool")
            if attn_mask_startend_row_indices is not None or bool(attention_mask.all()):
                attention_mask = None  # the causal (or packed block) mask already covers it
        out = self.model.language_model(
            inputs_embeds=self.model.embed(input_ids, pixel_values),
            attention_mask=attention_mask,
            position_ids=position_ids,
            attn_mask_startend_row_indices=attn_mask_startend_row_indices,
            past_key_values=past_key_values,
            use_cache=use_cache,
            return_dict=True,
        )
        hidden = out.last_hidden_state
        logits = self.lm_head(hidden[:, -logits_to_keep:] if logits_to_keep else hidden)
        loss = lm_loss(logits, labels) if labels is not None else None
        cache = out.past_key_values if use_cache else None
        return CausalLMOutputWithPast(loss=loss, logits=logits, past_key_values=cache)
