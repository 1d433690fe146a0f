"""Qwen2-VL's vision tower in Paddle with the original checkpoint's parameter names (paddleformers 1.2 has none).

Layout (Qwen2-VL, Wang et al. 2024; names as in the released checkpoints under `visual.*`):
pixels as flattened patches [N, C*T*P*P] -> `patch_embed.proj` (a Conv3d without bias, used as a matmul) ->
`blocks.N` (pre-LayerNorm: `norm1`, full attention within each frame with 2-D rotary positions, `norm2`, an
`fc1` / QuickGELU / `fc2` MLP) -> `merger` (LayerNorm `ln_q`, then every 2x2 group of patches concatenated and mapped
by `mlp.0` / GELU / `mlp.2` into the language model's width). Unlike Qwen2.5-VL there is no window attention, the
norms are LayerNorms with bias, and the MLP has no gate.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import paddle
import paddle.nn.functional as F
from paddle import nn
from paddle.distributed.fleet.utils import recompute
from paddleformers.transformers.configuration_utils import PretrainedConfig

from paddlemix.models.llava.clip import activation
from paddlemix.models.recompute import layer_recompute

# Qwen2-VL's fixed LayerNorm epsilon (its configs do not carry one).
NORM_EPS = 1e-6


class Qwen2VLVisionConfig(PretrainedConfig):
    """Hugging Face's `Qwen2VLVisionConfig` fields (defaults of Qwen2-VL-7B-Instruct).

    `embed_dim` is the tower's width, `hidden_size` the language model's (the merger's output). The released
    checkpoints' config.json spells the channel count `in_chans`; it is read as `in_channels`.
    """

    model_type = "qwen2_vl"
    base_config_key = "vision_config"
    # Qwen2-VL numbers the frames of a video 0, 1, 2, ...: Qwen2.5-VL's rule (grid step x seconds per step x
    # tokens per second) with one token per second and one second per step. Images (one frame) are unaffected.
    tokens_per_second = 1

    def __init__(
        self,
        depth: int = 32,
        embed_dim: int = 1280,
        hidden_size: int = 3584,
        hidden_act: str = "quick_gelu",
        mlp_ratio: float = 4,
        num_heads: int = 16,
        in_channels: int = 3,
        patch_size: int = 14,
        spatial_merge_size: int = 2,
        temporal_patch_size: int = 2,
        initializer_range: float = 0.02,
        **kwargs: Any,
    ):
        in_channels = kwargs.pop("in_chans", in_channels)
        kwargs.pop("spatial_patch_size", None)  # the released configs repeat patch_size under this name
        super().__init__(**kwargs)
        self.depth = depth
        self.embed_dim = embed_dim
        self.hidden_size = hidden_size
        self.hidden_act = hidden_act
        self.mlp_ratio = mlp_ratio
        self.num_heads = num_heads
        self.in_channels = in_channels
        self.patch_size = patch_size
        self.spatial_merge_size = spatial_merge_size
        self.temporal_patch_size = temporal_patch_size
        self.initializer_range = initializer_range


def rotate_half(x: paddle.Tensor) -> paddle.Tensor:
    """[a, b] -> [-b, a] on the last axis (the rotation partner of each rotary component)."""
    first, second = x.chunk(2, axis=-1)
    return paddle.concat([-second, first], axis=-1)


def apply_rotary(x: paddle.Tensor, cos: paddle.Tensor, sin: paddle.Tensor) -> paddle.Tensor:
    """Rotate x [L, heads, head_dim] by angles given as cos/sin [L, head_dim], in float32 as the original does."""
    dtype = x.dtype
    x = x.astype("float32")
    out = x * cos.unsqueeze(-2) + rotate_half(x) * sin.unsqueeze(-2)
    return out.astype(dtype)


def patch_positions(grid_thw: np.ndarray, merge: int) -> np.ndarray:
    """(row, column) of every patch [N, 2] in the processor's order: frame by frame, merge x merge blocks in raster
    order, raster order inside each block (Qwen2-VL's image processor flattens patches this way)."""
    rows = []
    for t, h, w in np.asarray(grid_thw, dtype="int64"):
        hh, ww = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")  # [h, w] each
        blocks = [a.reshape(h // merge, merge, w // merge, merge).transpose(0, 2, 1, 3).reshape(-1) for a in (hh, ww)]
        rows.append(np.tile(np.stack(blocks, axis=-1), (t, 1)))
    return np.concatenate(rows, axis=0)


class PatchEmbed(nn.Layer):
    """Flattened patches [N, C*T*P*P] -> embeddings [N, embed_dim] by a Conv3d whose kernel covers one patch."""

    def __init__(self, config: Qwen2VLVisionConfig):
        super().__init__()
        self.shape = [-1, config.in_channels, config.temporal_patch_size, config.patch_size, config.patch_size]
        kernel = self.shape[2:]
        self.proj = nn.Conv3D(config.in_channels, config.embed_dim, kernel, stride=kernel, bias_attr=False)

    def forward(self, pixel_values: paddle.Tensor) -> paddle.Tensor:
        x = pixel_values.astype(self.proj.weight.dtype).reshape(self.shape)
        return self.proj(x).reshape([x.shape[0], -1])


class VisionAttention(nn.Layer):
    """Multi-head attention with 2-D rotary positions; each frame attends only to itself (`lengths`: patches per
    frame, in order, as the original's `cu_seqlens`)."""

    def __init__(self, config: Qwen2VLVisionConfig):
        super().__init__()
        self.num_heads = config.num_heads
        self.head_dim = config.embed_dim // config.num_heads
        if self.head_dim * self.num_heads != config.embed_dim or self.head_dim % 4:
            raise ValueError(
                f"vision_config: embed_dim {config.embed_dim} must be num_heads ({config.num_heads}) times a head "
                "size divisible by 4 (half of each head rotates by rows, half by columns)"
            )
        self.qkv = nn.Linear(config.embed_dim, 3 * config.embed_dim)
        self.proj = nn.Linear(config.embed_dim, config.embed_dim)

    def forward(self, x: paddle.Tensor, lengths: list[int], cos: paddle.Tensor, sin: paddle.Tensor) -> paddle.Tensor:
        q, k, v = self.qkv(x).reshape([x.shape[0], 3, self.num_heads, self.head_dim]).unbind(1)  # [N, heads, dim]
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        # Paddle's fused attention (flash attention on GPUs, so a frame of thousands of patches never holds its
        # n x n score matrix; plain math elsewhere), one frame at a time.
        outputs = [
            F.scaled_dot_product_attention(qi[None], ki[None], vi[None], training=self.training)[0]  # [n, heads, dim]
            for qi, ki, vi in zip(*(paddle.split(t, lengths, axis=0) for t in (q, k, v)))
        ]
        return self.proj(paddle.concat(outputs, axis=0).reshape([x.shape[0], -1]))


class VisionMlp(nn.Layer):
    """fc1, activation (QuickGELU in the released models), fc2."""

    def __init__(self, config: Qwen2VLVisionConfig):
        super().__init__()
        hidden = int(config.embed_dim * config.mlp_ratio)
        self.fc1 = nn.Linear(config.embed_dim, hidden)
        self.act = activation(config.hidden_act)
        self.fc2 = nn.Linear(hidden, config.embed_dim)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class VisionBlock(nn.Layer):
    """Pre-norm residual block: attention, then the MLP."""

    def __init__(self, config: Qwen2VLVisionConfig):
        super().__init__()
        self.norm1 = nn.LayerNorm(config.embed_dim, epsilon=NORM_EPS)
        self.norm2 = nn.LayerNorm(config.embed_dim, epsilon=NORM_EPS)
        self.attn = VisionAttention(config)
        self.mlp = VisionMlp(config)

    def forward(self, x: paddle.Tensor, lengths: list[int], cos: paddle.Tensor, sin: paddle.Tensor) -> paddle.Tensor:
        x = x + self.attn(self.norm1(x), lengths, cos, sin)
        return x + self.mlp(self.norm2(x))


class PatchMerger(nn.Layer):
    """LayerNorm, then each merge x merge group of patches (adjacent in the input) -> one language-model token."""

    def __init__(self, config: Qwen2VLVisionConfig):
        super().__init__()
        self.merged = config.embed_dim * config.spatial_merge_size**2
        self.ln_q = nn.LayerNorm(config.embed_dim, epsilon=NORM_EPS)
        self.mlp = nn.Sequential(
            nn.Linear(self.merged, self.merged), nn.GELU(), nn.Linear(self.merged, config.hidden_size)
        )

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        return self.mlp(self.ln_q(x).reshape([-1, self.merged]))  # [N / merge^2, hidden_size]


class Qwen2VisionTransformer(nn.Layer):
    """The tower: patches of all images of a batch -> merged tokens [sum(t*h*w) / merge^2, hidden_size].

    The attributes `spatial_merge_size` and `patch_embed.proj` are what paddleformers' Qwen2.5-VL model reads of
    its `visual` tower (dtype of the pixels, split of the features per image).
    """

    def __init__(self, config: Qwen2VLVisionConfig):
        super().__init__()
        self.config = config
        self.spatial_merge_size = config.spatial_merge_size
        self.patch_embed = PatchEmbed(config)
        self.blocks = nn.LayerList([VisionBlock(config) for _ in range(config.depth)])
        self.merger = PatchMerger(config)
        rotary_dim = config.embed_dim // config.num_heads // 2  # half of the head: rows, the other half: columns
        self.inv_freq = 1.0 / 10000.0 ** (np.arange(0, rotary_dim, 2, dtype="float32") / rotary_dim)

    def rotary_angles(self, grid_thw: np.ndarray) -> tuple[paddle.Tensor, paddle.Tensor]:
        """cos and sin [N, head_dim] of every patch: row angles, column angles, both repeated once."""
        positions = patch_positions(grid_thw, self.spatial_merge_size).astype("float32")  # [N, 2]
        angles = (positions[..., None] * self.inv_freq).reshape([len(positions), -1])  # [N, head_dim / 2]
        angles = paddle.to_tensor(np.concatenate([angles, angles], axis=-1).astype("float32"))
        return angles.cos(), angles.sin()

    def forward(self, pixel_values: paddle.Tensor, grid_thw: paddle.Tensor) -> paddle.Tensor:
        grid = np.asarray(grid_thw.numpy() if isinstance(grid_thw, paddle.Tensor) else grid_thw, dtype="int64")
        x = self.patch_embed(pixel_values)  # [N, embed_dim]
        if x.shape[0] != int(np.prod(grid, axis=-1).sum()):
            raise ValueError(f"{x.shape[0]} patches do not fit image_grid_thw {grid.tolist()}")
        cos, sin = self.rotary_angles(grid)
        lengths = [int(h * w) for t, h, w in grid for _ in range(t)]  # one attention span per frame
        recompute_blocks = layer_recompute(self.config, self.training)
        for block in self.blocks:
            # With recompute on (paddlemix.trainer.recompute), only the block's output is kept for backward.
            if recompute_blocks and not x.stop_gradient:
                x = recompute(block, x, lengths, cos, sin, use_reentrant=False)
            else:
                x = block(x, lengths, cos, sin)
        return self.merger(x)
