"""Model families by config.json's `model_type`: an explicit dict, edited by adding a family file."""

from __future__ import annotations

import json
from pathlib import Path

from paddlemix.models import llava, paddleocr_vl, qwen2_5_vl, qwen2_vl, qwen3_vl
from paddlemix.models.adapter import ModelAdapter
from paddlemix.utils.errors import UserError

ADAPTERS: dict[str, ModelAdapter] = {
    "llava": llava.ADAPTER,
    "qwen2_vl": qwen2_vl.ADAPTER,
    "qwen2_5_vl": qwen2_5_vl.ADAPTER,
    "qwen3_vl": qwen3_vl.ADAPTER,
    "paddleocr_vl": paddleocr_vl.ADAPTER,
}


def adapter_for(model_dir: str | Path) -> ModelAdapter:
    """The adapter for the folder's `model_type`, or a UserError listing the supported ones."""
    config_path = Path(model_dir) / "config.json"
    if not config_path.is_file():
        raise UserError(f"{model_dir} is not a model folder: config.json is missing.")
    model_type = json.loads(config_path.read_text(encoding="utf-8")).get("model_type")
    if model_type not in ADAPTERS:
        raise UserError(
            f'{config_path}: model_type "{model_type}" is not supported; supported: {", ".join(sorted(ADAPTERS))}.'
        )
    return ADAPTERS[model_type]
