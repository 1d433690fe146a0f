"""Activation recompute: PaddleMIX's `"recompute": true` and paddleformers' recompute training arguments, applied
where the models read them.

paddleformers' model classes decide per layer from their *config* (`recompute_granularity == "full"`,
`recompute_method == "uniform"`, `recompute_num_layers == 1`), while its Trainer only reads the training arguments,
so setting them in the argument file changed nothing. This module copies the setting onto every config object of
the loaded model (top, text and vision configs, and the configs of our own LLaVA/CLIP parts), once, before
training. Only the language and vision layers' outputs are kept; each layer's inside is recomputed in backward.
"""

from __future__ import annotations

from typing import Any

from paddle.distributed.fleet.utils import recompute

from paddlemix.utils.errors import UserError

RECOMPUTE_FIELDS = ("recompute_granularity", "recompute_method", "recompute_num_layers")
# The only combination the model classes act on (see e.g. paddleformers' Qwen2_5_VLModel.forward).
SUPPORTED = {"recompute_granularity": "full", "recompute_method": "uniform", "recompute_num_layers": 1}


def recompute_settings(recompute: bool, training: Any, where: str = "the argument file") -> dict[str, Any] | None:
    """The config fields to set, or None when recompute is off.

    `recompute` is PaddleMIX's switch; `training` holds paddleformers' `recompute_granularity`,
    `recompute_method` and `recompute_num_layers` (unset fields take the supported value). Raises UserError for a
    combination the models would silently ignore.
    """
    given = {k: getattr(training, k, None) for k in RECOMPUTE_FIELDS}
    if not recompute and given["recompute_granularity"] is None:
        return None
    settings = {k: SUPPORTED[k] if v is None else v for k, v in given.items()}
    wrong = [k for k in RECOMPUTE_FIELDS if settings[k] != SUPPORTED[k]]
    if wrong:
        raise UserError(
            f'{where}: "{wrong[0]}" = {settings[wrong[0]]!r} is not supported by the models here, which recompute '
            f'whole layers only. Use "recompute": true alone (or "recompute_granularity": "full"), or drop it.'
        )
    return settings


def recompute_layer(layer: Any, hidden_states: Any, *args: Any, **kwargs: Any) -> Any:
    """Run `layer(hidden_states, *args, **kwargs)` keeping only its output for backward, which runs it again.

    Replaces paddleformers' per-model `recompute_training_full` helpers, which re-pass the layer's arguments by
    position in a fixed order: Qwen3-VL's vision one is called with a keyword it does not take
    (`attn_mask_startend_row_indices`, a TypeError). Forwarding the call as made is what the plain branch does.
    """
    return recompute(layer, hidden_states, *args, use_reentrant=False, **kwargs)


def apply_recompute(model: Any, settings: dict[str, Any] | None) -> int:
    """Set `settings` on every config object reachable from `model`'s layers (and their text/vision sub-configs)
    and route the layers' recompute through `recompute_layer`; returns how many config objects were changed.
    `model` may be wrapped (LoRA); configs are shared by reference."""
    if not settings:
        return 0
    configs: dict[int, Any] = {}
    for layer in [model, *model.sublayers()]:
        config = getattr(layer, "config", None)
        for candidate in (config, getattr(config, "text_config", None), getattr(config, "vision_config", None)):
            if candidate is not None and not isinstance(candidate, dict) and hasattr(candidate, "__dict__"):
                configs[id(candidate)] = candidate
    for layer in [model, *model.sublayers()]:
        if hasattr(layer, "recompute_training_full"):
            layer.recompute_training_full = recompute_layer
    for config in configs.values():
        for key, value in settings.items():
            setattr(config, key, value)
        if getattr(config, "use_cache", None):
            # A layer re-run in backward would append its keys and values to the forward's cache a second time
            # (paddleformers' Qwen2.5-VL then fails with mismatched key lengths); training needs no cache.
            config.use_cache = False
    return len(configs)
