"""Test inputs in the shapes peers bring: Hugging Face PEFT LoRA adapters with random non-zero A/B (written by the
safetensors library), for the base checkpoint in a model folder."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from paddlemix.utils.safetensors_stream import checkpoint_entries

PEFT_PREFIX = "base_model.model."


def write_peft_adapter(
    folder: str | Path,
    base_dir: str | Path,
    parameter_name: Callable[[str], str],
    target_modules: Sequence[str],
    rank: int = 4,
    alpha: int = 8,
    modules_to_save: Sequence[str] = (),
    use_rslora: bool = False,
    seed: int = 0,
    std: float = 0.05,
) -> dict[str, np.ndarray]:
    """Write a PEFT LoRA folder for the checkpoint in `base_dir` and return its tensors (float32, by file key).

    Every 2-D weight whose in-memory module name (`parameter_name` of its checkpoint name) ends with a
    `target_modules` entry gets A ~ N(0, std) [r, in] and B ~ N(0, std) [out, r]; every tensor of a module named in
    `modules_to_save` gets new N(0, 0.02) values, stored under its full name as PEFT stores `modules_to_save`.
    """
    rng = np.random.default_rng(seed)
    tensors: dict[str, np.ndarray] = {}
    for name, shape in sorted((e.name, e.shape) for e in checkpoint_entries(base_dir)):
        canonical = parameter_name(name)
        module = canonical.rsplit(".", 1)[0]
        if any(module == m or module.startswith(m + ".") for m in modules_to_save):
            tensors[PEFT_PREFIX + canonical] = rng.normal(0, 0.02, shape).astype(np.float32)
        elif (
            canonical.endswith(".weight")
            and len(shape) == 2
            and any(module == t or module.endswith("." + t) for t in target_modules)
        ):
            tensors[f"{PEFT_PREFIX}{module}.lora_A.weight"] = rng.normal(0, std, (rank, shape[1])).astype(np.float32)
            tensors[f"{PEFT_PREFIX}{module}.lora_B.weight"] = rng.normal(0, std, (shape[0], rank)).astype(np.float32)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / "adapter_model.safetensors"), metadata={"format": "pt"})
    config = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": rank, "lora_alpha": alpha, "lora_dropout": 0.0,
        "use_rslora": use_rslora, "target_modules": list(target_modules),
        "modules_to_save": list(modules_to_save) or None, "bias": "none", "fan_in_fan_out": False,
        "base_model_name_or_path": str(base_dir), "inference_mode": True,
    }  # fmt: skip
    (folder / "adapter_config.json").write_text(json.dumps(config, indent=2))
    return tensors


def scaling_of(folder: str | Path) -> float:
    """PEFT's scaling from an adapter_config.json: alpha / r, or alpha / sqrt(r) with rsLoRA."""
    config = json.loads((Path(folder) / "adapter_config.json").read_text())
    return config["lora_alpha"] / (math.sqrt(config["r"]) if config["use_rslora"] else config["r"])
