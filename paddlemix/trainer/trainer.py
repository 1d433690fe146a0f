"""One thin subclass of paddleformers' Trainer; every override is short and says why it exists."""

from __future__ import annotations

from typing import Any

import paddleformers.trainer.trainer as _pf_trainer
from paddleformers.trainer import Trainer

# paddleformers 1.2 names `GPTModel` in its evaluation loop but imports it only when paddlefleet is installed;
# a placeholder class keeps evaluation working without paddlefleet (nothing is an instance of it).
if not hasattr(_pf_trainer, "GPTModel"):
    _pf_trainer.GPTModel = type("GPTModel", (), {})


class MIXTrainer(Trainer):
    """Trainer that counts the real (non-pad) text and image tokens it trains on, for throughput logs."""

    def __init__(self, *args: Any, image_token_id: int | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.image_token_id = image_token_id
        self.text_tokens = 0
        self.image_tokens = 0

    def training_step(self, model: Any, inputs: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        mask = inputs.get("attention_mask")
        total = int(mask.sum()) if mask is not None else int(inputs["input_ids"].numel())
        images = int((inputs["input_ids"] == self.image_token_id).sum()) if self.image_token_id is not None else 0
        self.text_tokens += total - images
        self.image_tokens += images
        return super().training_step(model, inputs, *args, **kwargs)
