"""Test inputs in the shapes peers bring: Hugging Face PEFT LoRA adapters with random non-zero A/B, and real-size
style checkpoints (bfloat16, several shards with an index) made from a tiny float32 checkpoint.

bfloat16 values are produced by `ml_dtypes` (a paddleformers dependency), independently of the merge's own code.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import ml_dtypes
import numpy as np
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

from paddlemix.utils.io import MODEL_SIDE_FILES

PEFT_PREFIX = "base_model.model."


def checkpoint_shapes(model_dir: str | Path) -> dict[str, tuple[tuple[int, ...], str]]:
    """Name -> (shape, safetensors dtype code) of every tensor in a folder's *.safetensors files."""
    out = {}
    for path in sorted(Path(model_dir).glob("*.safetensors")):
        with safe_open(str(path), framework="numpy") as f:
            for name in f.keys():
                part = f.get_slice(name)
                out[name] = (tuple(part.get_shape()), part.get_dtype())
    return out


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
    for name, (shape, _) in sorted(checkpoint_shapes(base_dir).items()):
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


def write_sharded(src_dir: str | Path, dst_dir: str | Path, shards: int = 3, dtype: str = "bfloat16") -> Path:
    """Copy a model folder with its floating weights cast to `dtype` and split into `shards` files plus
    model.safetensors.index.json, as transformers saves large checkpoints; config.json names the new dtype."""
    src, dst = Path(src_dir), Path(dst_dir)
    dst.mkdir(parents=True, exist_ok=True)
    weights: dict[str, np.ndarray] = {}
    for path in sorted(src.glob("*.safetensors")):
        weights.update(load_file(str(path)))
    cast = ml_dtypes.bfloat16 if dtype == "bfloat16" else np.dtype(dtype)
    weights = {k: v.astype(cast) if v.dtype.kind == "f" else v for k, v in weights.items()}
    names = list(weights)
    groups = [names[i::shards] for i in range(shards)]
    weight_map = {}
    for i, group in enumerate(groups):
        file = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        save_file({k: weights[k] for k in group}, str(dst / file), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(group, file))
    total = sum(v.nbytes for v in weights.values())
    (dst / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2)
    )
    for name in MODEL_SIDE_FILES:
        if (src / name).is_file() and name != "config.json":
            (dst / name).write_bytes((src / name).read_bytes())
    config = json.loads((src / "config.json").read_text())
    config["torch_dtype"] = dtype
    (dst / "config.json").write_text(json.dumps(config, indent=2))
    return dst
