"""The one collator: pads encoded samples (or MIXToken packs) into a batch, images concatenated in sample order.

It returns numpy arrays only. The data loader turns them into tensors in the training process; creating paddle
tensors inside a forked loader worker crashes the worker (segmentation fault), which is what made
`dataloader_num_workers` >= 1 fail.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from paddlemix.datasets.packing import concat_vision, pack_batch
from paddlemix.datasets.pair_packing import ANSWER_INDEX, PAIR_COUNT, pair_batch
from paddlemix.processors.sample_processor import IGNORE_INDEX

REAL_TOKENS = "real_tokens"
LABEL_TOKENS = "label_tokens"
SAMPLE_IDS = "sample_ids"
SKIPS = "skips"
# Bookkeeping entries of a batch that the trainer removes before the model sees it.
BATCH_META = (REAL_TOKENS, LABEL_TOKENS, SAMPLE_IDS, SKIPS)


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
    batch.update(concat_vision(features, cast=True))
    return batch


def sample_ids_of(feature: dict[str, Any]) -> list[str]:
    """The ids ("source#index") of the samples in one encoded sample or pack (a pack lists its own)."""
    return list(feature.get("sample_ids") or [str(feature.get("sample_id", "?"))])


class Collator:
    """Batch encoded samples or packs as numpy arrays, plus bookkeeping the trainer removes before the forward:
    `real_tokens` (non-pad tokens, throughput), `label_tokens` (labelled positions, the loss normaliser of the
    optimizer step), `sample_ids` (one per sample, also inside packs) and `skips` (JSON lines of records skipped
    while this batch was read, counted when the batch is trained)."""

    def __init__(self, pad_token_id: int, pad_to_multiple_of: int = 8):
        self.pad_token_id = pad_token_id
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, features: Sequence[dict[str, Any]]) -> dict[str, Any]:
        if ANSWER_INDEX in features[0]:  # preference pairs (see pair_packing): the loss normaliser is the pairs
            batch = pair_batch(features, self.pad_token_id, padded_length(features, self.pad_to_multiple_of))
        elif "seq_lens" in features[0]:
            batch = pack_batch(features, self.pad_token_id, padded_length(features, self.pad_to_multiple_of))
        else:
            batch = pad_batch(features, self.pad_token_id, self.pad_to_multiple_of)
        batch[REAL_TOKENS] = np.asarray(sum(len(f["input_ids"]) for f in features), dtype="int64")
        labelled = batch[PAIR_COUNT] if PAIR_COUNT in batch else (batch["labels"] != IGNORE_INDEX).sum()
        batch[LABEL_TOKENS] = np.asarray(int(labelled), dtype="int64")
        batch[SAMPLE_IDS] = [sid for f in features for sid in sample_ids_of(f)]
        batch[SKIPS] = [line for f in features for line in f.get("skips", ())]
        return batch


def to_tensors(batch: dict[str, Any]) -> dict[str, Any]:
    """The collator's numpy batch as paddle tensors (lists stay lists), for calling a model outside a loader."""
    import paddle

    return {k: paddle.to_tensor(v) if isinstance(v, np.ndarray) else v for k, v in batch.items()}
