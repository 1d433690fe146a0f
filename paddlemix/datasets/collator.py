"""The one collator: pads encoded samples (or MIXToken packs) into a batch, images concatenated in sample order."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from paddlemix.datasets.packing import pack_batch
from paddlemix.processors.sample_processor import IGNORE_INDEX

REAL_TOKENS = "real_tokens"
SAMPLE_IDS = "sample_ids"


def padded_length(features: Sequence[dict[str, np.ndarray]], multiple: int) -> int:
    """The longest row of the batch, rounded up to a multiple of `multiple`."""
    longest = max(len(f["input_ids"]) for f in features)
    return -(-longest // multiple) * multiple


def pad_batch(features: Sequence[dict[str, np.ndarray]], pad_token_id: int, pad_to_multiple_of: int = 8) -> dict:
    """Right-pad ids and labels to the longest sample (rounded up), with a 0/1 attention mask; numpy arrays."""
    length = padded_length(features, pad_to_multiple_of)
    batch = {
        "input_ids": np.full((len(features), length), pad_token_id, dtype="int64"),
        "labels": np.full((len(features), length), IGNORE_INDEX, dtype="int64"),
        "attention_mask": np.zeros((len(features), length), dtype="int64"),
    }
    for row, f in enumerate(features):
        n = len(f["input_ids"])
        batch["input_ids"][row, :n] = f["input_ids"]
        batch["labels"][row, :n] = f["labels"]
        batch["attention_mask"][row, :n] = 1
    images = [f for f in features if "pixel_values" in f]
    if images:
        batch["pixel_values"] = np.concatenate([f["pixel_values"] for f in images]).astype("float32")
        batch["image_grid_thw"] = np.concatenate([f["image_grid_thw"] for f in images]).astype("int64")
    return batch


class Collator:
    """Batch encoded samples or packs as paddle tensors, plus the count of real (non-pad) tokens (throughput) and
    the sample ids (error reports); the trainer removes both before the model sees the batch."""

    def __init__(self, pad_token_id: int, pad_to_multiple_of: int = 8):
        self.pad_token_id = pad_token_id
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, features: Sequence[dict[str, np.ndarray]]) -> dict[str, Any]:
        import paddle

        if "seq_lens" in features[0]:
            batch = pack_batch(features, self.pad_token_id, padded_length(features, self.pad_to_multiple_of))
        else:
            batch = pad_batch(features, self.pad_token_id, self.pad_to_multiple_of)
        batch[REAL_TOKENS] = np.asarray(sum(len(f["input_ids"]) for f in features), dtype="int64")
        tensors = {k: paddle.to_tensor(v) for k, v in batch.items()}
        tensors[SAMPLE_IDS] = [str(f.get("sample_id", "?")) for f in features]
        return tensors
