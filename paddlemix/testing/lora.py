"""LoRA helpers for tests: a fresh adapter has B = 0 and changes nothing, so merge checks must perturb it first."""

from __future__ import annotations

from typing import Any

import numpy as np


def perturb_lora(model: Any, seed: int = 1, std: float = 0.05) -> None:
    """Give every LoRA matrix of a model with adapters random N(0, std) values, so the adapter really changes
    outputs."""
    import paddle

    rng = np.random.default_rng(seed)
    for name, param in model.named_parameters():
        if ".lora_A." in name or ".lora_B." in name:  # drawn in float32, then cast (numpy has no bfloat16)
            param.set_value(paddle.to_tensor(rng.normal(0, std, param.shape).astype("float32")).astype(param.dtype))
