"""What the Qwen2.5-VL and Qwen3-VL families share: the config fix, checkpoint names, image grids, mRoPE positions."""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import numpy as np

from paddlemix.models.adapter import prefix_aliases
from paddlemix.models.hf_layout import from_hf_layout


def prepare_config(config: Any, device: str) -> None:
    """Use the unfused RMSNorm where the fused kernel is missing (every device but CUDA GPUs), and on CPU the
    language model's attention of `paddlemix.models.attention` (paddleformers' eager one there took 1.2-1.9x as
    long for forward + backward, benchmarks/step_profile.py); other devices keep paddleformers' choice."""
    if device != "gpu":
        for part in (config.text_config, config.vision_config):
            part.fuse_rms_norm = False
    if device == "cpu":
        from paddlemix.models import attention

        config.text_config._attn_implementation = attention.register()


def paddle_name(name: str) -> str:
    """Qwen-VL checkpoint name -> Paddle name, from the original (`visual.*`, `model.*`) or the nested
    (`model.visual.*`, `model.language_model.*`) names."""
    if name.startswith("visual."):
        return "model." + name
    if name.startswith("model.") and not name.startswith("model.visual."):
        return "model.language_model." + name[len("model.") :].removeprefix("language_model.")
    return name


# PaddleMIX's names of our Qwen-VL parameters (our prefix, its prefixes), most specific first: its Qwen2-VL model
# keeps the original checkpoint names (`visual.*`, `model.*`); its first-generation Qwen-VL nests everything under
# `transformer.` (`transformer.visual.*`, decoder layers `transformer.h.*`) and has the vision resampler `attn_pool`
# where Qwen2-VL and later have the patch merger.
PADDLEMIX_PREFIXES = (
    ("model.visual.merger.", ("visual.merger.", "transformer.visual.attn_pool.")),
    ("model.visual.", ("visual.", "transformer.visual.")),
    ("model.language_model.layers.", ("model.layers.", "transformer.h.")),
    ("model.language_model.embed_tokens.", ("model.embed_tokens.", "transformer.wte.")),
    ("model.language_model.norm.", ("model.norm.", "transformer.ln_f.")),
    ("model.language_model.", ("model.",)),
)


def from_hf_state_dict(hf: dict[str, np.ndarray], config: Any, target: set[str]) -> dict[str, np.ndarray]:
    """Qwen-VL checkpoint tensors -> Paddle parameters (`target` names)."""
    return from_hf_layout(hf, config, target, paddle_name)


def image_grid(image_processor: Any, width: int, height: int) -> tuple[int, int, int]:
    """The (t, h, w) patch grid the image processor makes of a width x height image (one frame)."""
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

    patch, merge = image_processor.patch_size, image_processor.merge_size
    pixels = image_processor.size or {}
    min_pixels = pixels.get("shortest_edge", image_processor.min_pixels)
    max_pixels = pixels.get("longest_edge", image_processor.max_pixels)
    h, w = smart_resize(height, width, factor=patch * merge, min_pixels=min_pixels, max_pixels=max_pixels)
    return 1, h // patch, w // patch


def mrope_positions(
    get_rope_index: Callable[..., Any], config: Any, input_ids: np.ndarray, grid_thw: np.ndarray | None,
    video_grid_thw: np.ndarray | None = None, second_per_grid_ts: np.ndarray | None = None,
) -> np.ndarray:  # fmt: skip
    """3-D mRoPE position ids [3, L] of one sample by a model's own `get_rope_index` (it reads only `self.config`),
    with its images' and videos' grids (and Qwen2.5-VL's seconds per temporal patch of each video)."""
    import paddle

    def tensor(x: Any) -> Any:
        return paddle.to_tensor(np.asarray(x)) if x is not None and len(x) else None

    images, videos = tensor(grid_thw), tensor(video_grid_thw)
    if images is None and videos is None:
        return np.tile(np.arange(len(input_ids), dtype="int64"), (3, 1))
    kwargs = {"input_ids": paddle.to_tensor(input_ids[None]), "image_grid_thw": images, "video_grid_thw": videos}
    if second_per_grid_ts is not None and videos is not None:
        kwargs["second_per_grid_ts"] = paddle.to_tensor(np.asarray(second_per_grid_ts, dtype="float32"))
    position_ids, _ = get_rope_index(SimpleNamespace(config=config), **kwargs)
    return position_ids[:, 0].numpy()


# ModelAdapter fields with the same value for every Qwen-VL family: Qwen2's vision tokens, the config fix, the HF
# import and the image grid. Each family file adds the rest (classes, LoRA targets, module groups, export, positions).
SHARED_ADAPTER_FIELDS: dict[str, Any] = {
    "vision_placeholder": "<|vision_start|><|image_pad|><|vision_end|>",
    "image_token": "<|image_pad|>",
    "prepare_config": prepare_config,
    "import_state_dict": from_hf_state_dict,
    "parameter_name": paddle_name,
    "image_grid": image_grid,
    "paddlemix_names": prefix_aliases(PADDLEMIX_PREFIXES),
}
