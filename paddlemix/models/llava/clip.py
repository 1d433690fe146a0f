"""A CLIP vision transformer in Paddle with Hugging Face `CLIPVisionModel` parameter names (paddleformers has none).

Layout: patch embedding (a strided convolution) + class token + learned positions -> `pre_layrnorm` -> pre-norm
encoder layers (attention, then an MLP) -> `post_layernorm` on the class token. LLaVA reads the hidden states of one
encoder layer instead of the pooled output, so the tower runs only the layers that layer needs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import paddle
import paddle.nn.functional as F
from paddle import nn
from paddle.distributed.fleet.utils import recompute
from paddleformers.transformers.configuration_utils import PretrainedConfig

from paddlemix.models.recompute import layer_recompute


def quick_gelu(x: paddle.Tensor) -> paddle.Tensor:
    """CLIP's sigmoid approximation of GELU."""
    return x * F.sigmoid(1.702 * x)


ACTIVATIONS: dict[str, Callable[[paddle.Tensor], paddle.Tensor]] = {
    "quick_gelu": quick_gelu,
    "gelu": F.gelu,
    "gelu_new": lambda x: F.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate=True),
    "relu": F.relu,
    "silu": F.silu,
}


def activation(name: str) -> Callable[[paddle.Tensor], paddle.Tensor]:
    """The activation function called `name` in Hugging Face configs."""
    if name not in ACTIVATIONS:
        raise ValueError(f'activation "{name}" is not supported; supported: {", ".join(sorted(ACTIVATIONS))}.')
    return ACTIVATIONS[name]


class CLIPVisionConfig(PretrainedConfig):
    """Hugging Face's `CLIPVisionConfig` fields (defaults of openai/clip-vit-base-patch32)."""

    model_type = "clip_vision_model"

    def __init__(
        self,
        hidden_size: int = 768,
        intermediate_size: int = 3072,
        projection_dim: int = 512,
        num_hidden_layers: int = 12,
        num_attention_heads: int = 12,
        num_channels: int = 3,
        image_size: int = 224,
        patch_size: int = 32,
        hidden_act: str = "quick_gelu",
        layer_norm_eps: float = 1e-5,
        attention_dropout: float = 0.0,
        initializer_range: float = 0.02,
        initializer_factor: float = 1.0,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.projection_dim = projection_dim
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.num_channels = num_channels
        self.image_size = image_size
        self.patch_size = patch_size
        self.hidden_act = hidden_act
        self.layer_norm_eps = layer_norm_eps
        self.attention_dropout = attention_dropout
        self.initializer_range = initializer_range
        self.initializer_factor = initializer_factor


class CLIPVisionEmbeddings(nn.Layer):
    """Patches (a strided convolution) after a learned class token, plus learned absolute positions."""

    def __init__(self, config: CLIPVisionConfig):
        super().__init__()
        self.image_size, self.patch_size = config.image_size, config.patch_size
        hidden = config.hidden_size
        self.class_embedding = self.create_parameter([hidden], default_initializer=nn.initializer.Normal(std=0.02))
        self.patch_embedding = nn.Conv2D(
            config.num_channels, hidden, config.patch_size, stride=config.patch_size, bias_attr=False
        )
        self.position_embedding = nn.Embedding((config.image_size // config.patch_size) ** 2 + 1, hidden)

    def forward(self, pixel_values: paddle.Tensor) -> paddle.Tensor:
        height, width = pixel_values.shape[-2:]
        if (height, width) != (self.image_size, self.image_size):
            raise ValueError(
                f"images must be {self.image_size}x{self.image_size} pixels for this vision tower (got "
                f"{height}x{width}); the image processor's crop size must match vision_config.image_size."
            )
        weight = self.patch_embedding.weight
        patches = self.patch_embedding(pixel_values.astype(weight.dtype))  # [N, hidden, h, w]
        patches = patches.flatten(2).transpose([0, 2, 1])  # [N, h*w, hidden]
        cls = self.class_embedding.astype(patches.dtype).expand([patches.shape[0], 1, -1])
        return paddle.concat([cls, patches], axis=1) + self.position_embedding.weight  # [N, 1+h*w, hidden]


class CLIPAttention(nn.Layer):
    """Multi-head self-attention over all tokens of an image (no mask: every patch sees every patch)."""

    def __init__(self, config: CLIPVisionConfig):
        super().__init__()
        hidden = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.head_dim = hidden // self.num_heads
        if self.head_dim * self.num_heads != hidden:
            raise ValueError(f"vision hidden_size {hidden} is not divisible by num_attention_heads {self.num_heads}")
        self.scale = self.head_dim**-0.5
        self.dropout = config.attention_dropout
        self.q_proj, self.k_proj = nn.Linear(hidden, hidden), nn.Linear(hidden, hidden)
        self.v_proj, self.out_proj = nn.Linear(hidden, hidden), nn.Linear(hidden, hidden)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        batch, length, _ = x.shape
        q, k, v = (
            p(x).reshape([batch, length, self.num_heads, self.head_dim]).transpose([0, 2, 1, 3])
            for p in (self.q_proj, self.k_proj, self.v_proj)
        )  # [N, heads, L, head_dim]
        weights = F.softmax(paddle.matmul(q, k, transpose_y=True) * self.scale, axis=-1)
        weights = F.dropout(weights, p=self.dropout, training=self.training)
        out = paddle.matmul(weights, v).transpose([0, 2, 1, 3]).reshape([batch, length, -1])
        return self.out_proj(out)


class CLIPMLP(nn.Layer):
    """fc1, activation (CLIP: quick_gelu), fc2."""

    def __init__(self, config: CLIPVisionConfig):
        super().__init__()
        self.act = activation(config.hidden_act)
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class CLIPEncoderLayer(nn.Layer):
    """Pre-norm residual block: attention, then the MLP."""

    def __init__(self, config: CLIPVisionConfig):
        super().__init__()
        self.self_attn = CLIPAttention(config)
        self.layer_norm1 = nn.LayerNorm(config.hidden_size, epsilon=config.layer_norm_eps)
        self.mlp = CLIPMLP(config)
        self.layer_norm2 = nn.LayerNorm(config.hidden_size, epsilon=config.layer_norm_eps)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class CLIPEncoder(nn.Layer):
    """The stack of encoder layers (a container, so parameter names match `encoder.layers.N`)."""

    def __init__(self, config: CLIPVisionConfig):
        super().__init__()
        self.layers = nn.LayerList([CLIPEncoderLayer(config) for _ in range(config.num_hidden_layers)])


class CLIPVisionTransformer(nn.Layer):
    """Embeddings, `pre_layrnorm`, encoder and `post_layernorm`, under HF's names."""

    def __init__(self, config: CLIPVisionConfig):
        super().__init__()
        self.embeddings = CLIPVisionEmbeddings(config)
        self.pre_layrnorm = nn.LayerNorm(config.hidden_size, epsilon=config.layer_norm_eps)
        self.encoder = CLIPEncoder(config)
        # Kept for the checkpoint layout; only the pooled output (which LLaVA does not use) passes through it.
        self.post_layernorm = nn.LayerNorm(config.hidden_size, epsilon=config.layer_norm_eps)


class CLIPVisionModel(nn.Layer):
    """The vision tower; `vision_model.*` parameter names match Hugging Face's `CLIPVisionModel`."""

    def __init__(self, config: CLIPVisionConfig):
        super().__init__()
        self.config = config
        self.vision_model = CLIPVisionTransformer(config)

    def hidden_states(self, pixel_values: paddle.Tensor, layers: Sequence[int]) -> list[paddle.Tensor]:
        """Hidden states [N, 1+patches, hidden] of the given layers, numbered as Hugging Face's `hidden_states`
        tuple (0 = embeddings after `pre_layrnorm`, i = output of encoder layer i, negative from the end)."""
        total = len(self.vision_model.encoder.layers)
        if any(not -(total + 1) <= layer <= total for layer in layers):
            raise ValueError(f"vision_feature_layer {list(layers)} is out of range for {total} encoder layers")
        wanted = [layer % (total + 1) for layer in layers]
        x = self.vision_model.pre_layrnorm(self.vision_model.embeddings(pixel_values))
        states = [x]
        recompute_layers = layer_recompute(self.config, self.training)
        for layer in list(self.vision_model.encoder.layers)[: max(wanted)]:
            # With recompute on (paddlemix.trainer.recompute), only the layer's output is kept for backward.
            x = recompute(layer, x, use_reentrant=False) if recompute_layers and not x.stop_gradient else layer(x)
            states.append(x)
        return [states[i] for i in wanted]
