"""The config and model classes of the family: paddleformers' PaddleOCR-VL classes, read from either
transformers generation's config.json and computing positions for any number of images per row."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from paddlemix.models.paddleocr_vl.compat import modeling
from paddlemix.models.paddleocr_vl.positions import image_positions
from paddlemix.utils.io import read_json

# Keys of transformers 5.x's nested `text_config` that are not the language model's settings.
_NOT_TEXT = ("model_type", "architectures", "dtype", "torch_dtype")


def flat_config(raw: dict[str, Any]) -> dict[str, Any]:
    """A config.json dict as paddleformers' flat `PaddleOCRVLConfig` reads it: transformers 5.x nests the language
    model's keys under `text_config` and writes `rope_parameters` (with `rope_theta` inside); the released
    (original) files keep them at the top level as `rope_theta` + `rope_scaling`."""
    flat = {k: v for k, v in raw.items() if k != "text_config"}
    for key, value in (raw.get("text_config") or {}).items():
        if key not in _NOT_TEXT:
            flat.setdefault(key, value)
    rope = flat.pop("rope_parameters", None)
    if isinstance(rope, dict) and "rope_scaling" not in flat:
        rope = dict(rope)
        flat.setdefault("rope_theta", rope.pop("rope_theta", flat.get("rope_theta", 10000)))
        flat["rope_scaling"] = rope
    return flat


class PaddleOCRVLConfigMIX:
    """Reads a folder's config.json of either layout into paddleformers' `PaddleOCRVLConfig` (`flat_config`)."""

    @classmethod
    def from_pretrained(cls, path: str | Path, **kwargs: Any) -> Any:
        from paddleformers.transformers.paddleocr_vl.configuration import PaddleOCRVLConfig

        config = PaddleOCRVLConfig(**flat_config(read_json(Path(path) / "config.json")), **kwargs)
        config._name_or_path = str(path)
        config.return_dict = True  # outputs with `.loss` / `.logits`, as every other family's model returns
        return config


def _model_class() -> type:
    base = modeling().PaddleOCRVLForConditionalGeneration

    class PaddleOCRVLForConditionalGenerationMIX(base):
        """paddleformers' model whose own positions (used when none are given) follow `positions.image_positions`
        row by row, so a batch may hold any number of images per row, and whose head is the embedding table
        itself when `tie_word_embeddings` is set (paddleformers builds a separate head; transformers 5.x ties it)."""

        def __init__(self, config: Any) -> None:
            super().__init__(config)
            if config.tie_word_embeddings:
                self.lm_head.weight = self.model.embed_tokens.weight

        def get_rope_index(self, input_ids=None, image_grid_thw=None, video_grid_thw=None,
                           second_per_grid_ts=None, attention_mask=None):  # fmt: skip
            import paddle

            if input_ids is None or image_grid_thw is None:
                return super().get_rope_index(input_ids, image_grid_thw, video_grid_thw, second_per_grid_ts,
                                              attention_mask)  # fmt: skip
            ids, grids = input_ids.numpy(), image_grid_thw.numpy()
            merge = int(self.config.vision_config.spatial_merge_size)
            image_id = int(self.config.image_token_id)
            rows, used = [], 0
            for row in ids:
                n_images = _images_in(row, image_id, grids[used:], merge)
                rows.append(image_positions(row, image_id, grids[used : used + n_images], merge))
                used += n_images
            position_ids = np.stack(rows, axis=1)  # [3, B, L]
            deltas = position_ids.max(axis=(0, 2)) + 1 - ids.shape[1]
            return paddle.to_tensor(position_ids), paddle.to_tensor(deltas[:, None])

    return PaddleOCRVLForConditionalGenerationMIX


def _images_in(row: np.ndarray, image_id: int, grids: np.ndarray, merge: int) -> int:
    """How many of `grids` (in order) the image tokens of one row use."""
    tokens, count = int((row == image_id).sum()), 0
    while tokens > 0:
        t, h, w = (int(x) for x in grids[count])
        tokens -= t * (h // merge) * (w // merge)
        count += 1
    return count


def __getattr__(name: str) -> Any:
    """`PaddleOCRVLForConditionalGenerationMIX`, built on first use so importing this module imports no model."""
    if name == "PaddleOCRVLForConditionalGenerationMIX":
        cls = _model_class()
        globals()[name] = cls
        return cls
    raise AttributeError(name)
