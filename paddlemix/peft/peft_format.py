"""Adapter files in Hugging Face PEFT's format, so PEFT, vLLM, LLaMA-Factory and ms-swift load ours and we load theirs.

A folder holds:
- `adapter_config.json`: the fields `peft.LoraConfig` reads (`peft_type` "LORA", `r`, `lora_alpha`, `target_modules`,
  `modules_to_save`, ...; see `adapter_config`);
- `adapter_model.safetensors`: `base_model.model.<module>.lora_A.weight` [r, in] and `...lora_B.weight` [out, r] in
  torch layout, `<module>` being the layer path in transformers' in-memory model (q/k/v and gate/up separate), plus
  every tensor of a fully trained module as `base_model.model.<module>.<param>` (torch layout: Linear weights
  [out, in]), which is how PEFT saves `modules_to_save`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from paddlemix.utils.errors import UserError
from paddlemix.utils.io import load_safetensors, save_safetensors, write_json

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PREFIX = "base_model.model."
LORA_A, LORA_B = ".lora_A.weight", ".lora_B.weight"


@dataclass(frozen=True)
class PeftAdapter:
    """One LoRA adapter in PEFT's terms: per module its A [r, in] and B [out, r] (torch layout), the fully trained
    tensors by parameter name (torch layout), and the hyper-parameters."""

    lora_A: dict[str, np.ndarray]
    lora_B: dict[str, np.ndarray]
    saved: dict[str, np.ndarray]
    r: int
    lora_alpha: float
    lora_dropout: float = 0.0
    use_rslora: bool = False
    target_modules: str | list[str] = field(default_factory=list)
    modules_to_save: list[str] = field(default_factory=list)
    base_model_name_or_path: str | None = None

    @property
    def scaling(self) -> float:
        """PEFT's scaling: lora_alpha / r, or lora_alpha / sqrt(r) with rsLoRA."""
        return self.lora_alpha / (self.r**0.5 if self.use_rslora else self.r)


def adapter_config(adapter: PeftAdapter) -> dict[str, Any]:
    """The adapter_config.json fields `peft.LoraConfig` reads (PEFT 0.17's names and defaults)."""
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "r": adapter.r,
        "lora_alpha": adapter.lora_alpha,
        "lora_dropout": adapter.lora_dropout,
        "use_rslora": adapter.use_rslora,
        "target_modules": adapter.target_modules,
        "modules_to_save": adapter.modules_to_save or None,
        "bias": "none",
        "fan_in_fan_out": False,
        "init_lora_weights": True,
        "use_dora": False,
        "rank_pattern": {},
        "alpha_pattern": {},
        "layers_to_transform": None,
        "layers_pattern": None,
        "base_model_name_or_path": adapter.base_model_name_or_path,
        "inference_mode": True,
    }


def write_adapter(adapter: PeftAdapter, folder: str | Path) -> None:
    """Write adapter_config.json and adapter_model.safetensors into `folder` (created if needed)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, np.ndarray] = {}
    for module in adapter.lora_A:
        tensors[PREFIX + module + LORA_A] = adapter.lora_A[module]
        tensors[PREFIX + module + LORA_B] = adapter.lora_B[module]
    tensors.update({PREFIX + name: value for name, value in adapter.saved.items()})
    save_safetensors({k: np.ascontiguousarray(v) for k, v in tensors.items()}, folder / ADAPTER_WEIGHTS)
    write_json(adapter_config(adapter), folder / ADAPTER_CONFIG)


# Config values of PEFT features this loader does not implement, with the value that means "not used".
_UNSUPPORTED = {"use_dora": False, "fan_in_fan_out": False, "rank_pattern": {}, "alpha_pattern": {}, "bias": "none"}


def read_adapter(folder: str | Path) -> PeftAdapter:
    """Read a PEFT LoRA adapter folder (ours or one saved by `peft.PeftModel.save_pretrained`).

    Raises:
        UserError: a file is missing, the adapter is not LoRA, or it uses a PEFT feature not supported here
            (DoRA, per-module ranks or alphas, trained biases, fan_in_fan_out, embedding LoRA).
    """
    folder = Path(folder)
    config_path, weights_path = folder / ADAPTER_CONFIG, folder / ADAPTER_WEIGHTS
    if not config_path.is_file() or not weights_path.is_file():
        missing = [p.name for p in (config_path, weights_path) if not p.is_file()]
        raise UserError(
            f'"lora_path" = "{folder}" holds no Hugging Face PEFT adapter ({", ".join(missing)} missing). Point it '
            "at a folder written by a LoRA run or by `PeftModel.save_pretrained` (adapter_config.json + "
            "adapter_model.safetensors)."
        )
    config = json.loads(config_path.read_text(encoding="utf-8"))
    if config.get("peft_type", "LORA") != "LORA":
        raise UserError(f'{config_path}: "peft_type" is {config.get("peft_type")!r}; only LoRA adapters load here.')
    for key, plain in _UNSUPPORTED.items():
        if config.get(key, plain) not in (plain, None):
            raise UserError(
                f'{config_path}: "{key}" = {config[key]!r} is a PEFT feature this toolkit does not implement; '
                f"retrain the adapter with {key} = {plain!r}."
            )
    return PeftAdapter(
        *split_tensors(load_safetensors(weights_path), weights_path),
        r=int(config["r"]),
        lora_alpha=float(config["lora_alpha"]),
        lora_dropout=float(config.get("lora_dropout") or 0.0),
        use_rslora=bool(config.get("use_rslora", False)),
        target_modules=config.get("target_modules") or [],
        modules_to_save=list(config.get("modules_to_save") or []),
        base_model_name_or_path=config.get("base_model_name_or_path"),
    )


def split_tensors(
    tensors: Mapping[str, np.ndarray], where: str | Path = ""
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict[str, np.ndarray]]:
    """PEFT file keys -> (lora_A by module, lora_B by module, fully trained tensors by parameter name)."""
    lora_a, lora_b, saved = {}, {}, {}
    for key, value in tensors.items():
        name = key.removeprefix(PREFIX)
        if name.endswith(LORA_A):
            lora_a[name[: -len(LORA_A)]] = value
        elif name.endswith(LORA_B):
            lora_b[name[: -len(LORA_B)]] = value
        elif ".lora_" in name:
            raise UserError(f"{where}: tensor {key} is a LoRA variant this toolkit does not load (only lora_A/B).")
        else:
            saved[name] = value
    if set(lora_a) != set(lora_b):
        odd = sorted(set(lora_a) ^ set(lora_b))[:3]
        raise UserError(f"{where}: modules {odd} have only one of lora_A / lora_B; the file is incomplete.")
    return lora_a, lora_b, saved


def merge_lora(
    base: Mapping[str, np.ndarray], adapter: PeftAdapter, modules: Sequence[str] | None = None
) -> dict[str, np.ndarray]:
    """Fold a PEFT adapter into base weights, as PEFT's merge does: W + scaling * B @ A, all in torch layout.

    `base` is keyed by transformers' in-memory parameter names (`<module>.weight` [out, in]); fully trained tensors
    replace their base tensors. `modules` limits the merge to those LoRA modules (for merging shard by shard).
    Returns a new dict with the base's keys; float32 math, the base's dtype kept.

    Raises:
        KeyError: an adapter tensor has no base counterpart.
    """
    merged = dict(base)
    for module in adapter.lora_A if modules is None else modules:
        weight = base[module + ".weight"]
        delta = adapter.lora_B[module].astype("float32") @ adapter.lora_A[module].astype("float32")
        merged[module + ".weight"] = (weight.astype("float32") + adapter.scaling * delta).astype(weight.dtype)
    if modules is None:
        for name, value in adapter.saved.items():
            if name not in base:
                raise KeyError(f"adapter tensor {name} has no counterpart in the base model")
            merged[name] = value.astype(base[name].dtype)
    return merged
