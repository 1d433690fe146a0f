"""Family-agnostic loaders: `AutoConfigMIX`, `AutoModelMIX`, `AutoProcessorMIX`, chosen by config.json's model_type."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from paddlemix.models import adapter_for


class AutoConfigMIX:
    """Load a model folder's config with the settings this device needs (e.g. unfused RMSNorm off-GPU)."""

    @staticmethod
    def from_pretrained(path: str | Path, device: str = "cpu") -> Any:
        return adapter_for(path).load_config(path, device)


class AutoModelMIX:
    """Load a model folder (Hugging Face layout, safetensors) with its family's class; `dtype` None keeps the
    checkpoint's dtype. The folder is only read (see paddlemix/models/loading.py)."""

    @staticmethod
    def from_pretrained(
        path: str | Path, dtype: str | None = "float32", device: str = "cpu", allow_pickle: bool = False
    ) -> Any:
        return adapter_for(path).load_model(path, dtype=dtype, device=device, allow_pickle=allow_pickle)


class AutoProcessorMIX:
    """Load a model folder's processor (tokenizer + image processor + chat template)."""

    @staticmethod
    def from_pretrained(path: str | Path) -> Any:
        return adapter_for(path).load_processor(path)
