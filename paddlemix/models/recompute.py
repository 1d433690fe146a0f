"""The per-layer recompute rule of paddleformers' layer stacks, for this toolkit's own towers (LLaVA's CLIP,
Qwen2-VL's ViT), so the one setting `paddlemix.trainer.recompute` applies reaches every layer stack."""

from __future__ import annotations

from typing import Any


def layer_recompute(config: Any, training: bool) -> bool:
    """True when each layer should keep only its output for backward: training, and the config carries
    paddleformers' full/uniform/1 setting (`recompute_granularity`, `recompute_method`, `recompute_num_layers`)."""
    return training and (
        getattr(config, "recompute_granularity", None) == "full"
        and getattr(config, "recompute_method", None) == "uniform"
        and getattr(config, "recompute_num_layers", None) == 1
    )
