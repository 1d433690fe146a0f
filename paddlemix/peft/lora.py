"""LoRA through paddleformers' LoRAModel: apply, save and load adapters as safetensors, merge as a pure function.

An adapter folder holds `adapter_model.safetensors` (LoRA A/B matrices plus any fully trained modules, under the
model's parameter names), `lora_config.json`, and the run's `run_args.json` naming the base model.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from paddlemix.utils.errors import UserError
from paddlemix.utils.io import load_safetensors, save_safetensors, to_numpy

logger = logging.getLogger(__name__)

ADAPTER_WEIGHTS = "adapter_model.safetensors"
LORA_CONFIG = "lora_config.json"


def layer_names(model: Any) -> list[str]:
    return [name for name, _ in model.named_sublayers()]


def apply_lora(
    model: Any,
    targets: Sequence[str],
    rank: int,
    alpha: int,
    dropout: float = 0.0,
    trainable_modules: Sequence[str] = (),
    tensor_parallel_degree: int = 1,
) -> Any:
    """Wrap `model` in a LoRAModel on the layers whose names fully match one of `targets` (regexes)."""
    from paddleformers.peft import LoRAConfig, LoRAModel

    names = layer_names(model)
    for pattern in targets:
        if not any(re.fullmatch(pattern, n) for n in names):
            linear = [n for n in names if n.endswith(("proj", "qkv", "fc1", "fc2"))][:6]
            raise UserError(
                f'"lora_target_modules" pattern {pattern!r} matches no layer of this model. Patterns must match whole '
                f"layer names, such as {', '.join(linear)}."
            )
    config = LoRAConfig(
        target_modules=list(targets),
        trainable_modules=list(trainable_modules) or None,
        r=rank,
        lora_alpha=alpha,
        lora_dropout=dropout,
        tensor_model_parallel_size=tensor_parallel_degree,
    )
    return LoRAModel(model, config)


def base_model(model: Any) -> Any:
    """The wrapped model of a LoRAModel, or `model` itself."""
    from paddleformers.peft import LoRAModel

    return model.model if isinstance(model, LoRAModel) else model


def adapter_state_dict(lora_model: Any) -> dict[str, np.ndarray]:
    """The trainable tensors of a LoRAModel (A/B matrices and fully trained modules) as numpy arrays."""
    return {k: to_numpy(v) for k, v in lora_model.get_trainable_state_dict().items()}


def save_adapter(lora_model: Any, folder: str | Path) -> None:
    """Write the adapter weights and LoRA config into `folder`."""
    Path(folder).mkdir(parents=True, exist_ok=True)
    save_safetensors(adapter_state_dict(lora_model), Path(folder) / ADAPTER_WEIGHTS)
    lora_model.lora_config.save_pretrained(str(folder))


def load_adapter(model: Any, folder: str | Path) -> Any:
    """Wrap `model` with the adapter saved in `folder` and load its weights strictly."""
    from paddleformers.peft import LoRAConfig, LoRAModel

    folder = Path(folder)
    if not (folder / ADAPTER_WEIGHTS).is_file():
        raise UserError(f"{folder} holds no LoRA adapter ({ADAPTER_WEIGHTS} is missing).")
    lora_model = LoRAModel(model, LoRAConfig.from_pretrained(str(folder)))
    weights = load_safetensors(folder / ADAPTER_WEIGHTS)
    expected = set(lora_model.get_trainable_state_dict())
    if set(weights) != expected:
        missing, extra = sorted(expected - set(weights))[:3], sorted(set(weights) - expected)[:3]
        raise UserError(f"adapter {folder} does not fit this model (missing {missing}, unexpected {extra}).")
    state = lora_model.model.state_dict()
    for name, value in weights.items():
        state[name].set_value(value.astype(str(state[name].dtype).replace("paddle.", "")))
    return lora_model


def merge_lora(base: dict[str, np.ndarray], adapter: dict[str, np.ndarray], scaling: float) -> dict[str, np.ndarray]:
    """Fold an adapter into base weights: W + A @ B * scaling for each LoRA layer ([in, out] layout).

    Fully trained modules stored in the adapter replace their base tensors. Returns a new dict with the base's keys.
    """
    merged = dict(base)
    for name, value in adapter.items():
        if name.endswith(".lora_A"):
            layer = name[: -len(".lora_A")]
            delta = value.astype("float32") @ adapter[layer + ".lora_B"].astype("float32") * scaling
            weight = base[layer + ".weight"]
            merged[layer + ".weight"] = (weight.astype("float32") + delta).astype(weight.dtype)
        elif not name.endswith(".lora_B"):
            if name not in base:
                raise KeyError(f"adapter tensor {name} has no counterpart in the base model")
            merged[name] = value
    return merged


def merge_adapter_folder(base_dir: str | Path, lora_dir: str | Path, out_dir: str | Path) -> Path:
    """Write base + adapter as one complete model folder (HF layout, safetensors) at `out_dir`, atomically."""
    import json

    from paddlemix.models import adapter_for
    from paddlemix.utils.io import atomic_dir, copy_side_files

    lora_dir = Path(lora_dir)
    if not (lora_dir / LORA_CONFIG).is_file():
        raise UserError(f"{lora_dir} holds no LoRA adapter ({LORA_CONFIG} is missing).")
    config = json.loads((lora_dir / LORA_CONFIG).read_text(encoding="utf-8"))
    scaling = config["lora_alpha"] / (np.sqrt(config["r"]) if config.get("rslora") else config["r"])
    family = adapter_for(base_dir)
    model = family.load_model(base_dir)
    base = {k: to_numpy(v) for k, v in model.state_dict().items()}
    merged = merge_lora(base, load_safetensors(lora_dir / ADAPTER_WEIGHTS), scaling)
    with atomic_dir(out_dir) as tmp:
        copy_side_files(base_dir, tmp)
        copy_side_files(lora_dir, tmp)
        save_safetensors(family.export_state_dict(merged, model.config), tmp / "model.safetensors")
    logger.info("merged %s into %s -> %s", lora_dir, base_dir, out_dir)
    return Path(out_dir)
