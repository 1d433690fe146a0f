from __future__ import annotations

import numpy as np

from paddlemix.datasets.collator import Collator, pad_batch
from paddlemix.processors.sample_processor import IGNORE_INDEX


def feature(n: int, with_image: bool) -> dict:
    out = {"input_ids": np.arange(1, n + 1), "labels": np.arange(1, n + 1)}
    if with_image:
        out["pixel_values"] = np.full((4, 6), n, dtype="float32")
        out["image_grid_thw"] = np.array([[1, 2, 2]])
    return out


def test_pads_right_to_multiple_and_masks() -> None:
    batch = pad_batch([feature(3, False), feature(10, True)], pad_token_id=0, pad_to_multiple_of=8)
    assert batch["input_ids"].shape == (2, 16)
    assert batch["attention_mask"][0].tolist() == [1] * 3 + [0] * 13
    assert (batch["labels"][0, 3:] == IGNORE_INDEX).all()
    assert (batch["input_ids"][0, 3:] == 0).all()


def test_images_concatenated_in_sample_order() -> None:
    batch = pad_batch([feature(5, True), feature(2, False), feature(7, True)], pad_token_id=0)
    assert batch["pixel_values"][:4, 0].tolist() == [5] * 4 and batch["pixel_values"][4:, 0].tolist() == [7] * 4
    assert batch["image_grid_thw"].shape == (2, 3)


def test_collator_returns_numpy_and_bookkeeping() -> None:
    """Numpy only: paddle tensors created in a forked loader worker crash it (dataloader_num_workers >= 1)."""
    features = [{**feature(3, True), "sample_id": "src#7", "skips": ['{"source": "src"}']}, feature(5, False)]
    features[1]["labels"][:2] = IGNORE_INDEX
    batch = Collator(pad_token_id=0)(features)
    assert batch.pop("sample_ids") == ["src#7", "?"] and batch.pop("skips") == ['{"source": "src"}']
    assert all(isinstance(v, np.ndarray) for v in batch.values())
    assert int(batch["real_tokens"]) == 8 and int(batch["label_tokens"]) == 3 + 3


def test_packed_rows_list_every_sample() -> None:
    from paddlemix.datasets.packing import build_pack

    positions = lambda ids, grid: np.arange(len(ids))[None]  # noqa: E731
    a = build_pack([{**feature(2, False), "sample_id": "s#1"}, {**feature(3, False), "sample_id": "s#2"}], positions)
    b = build_pack([{**feature(4, False), "sample_id": "t#9"}], positions)
    batch = Collator(pad_token_id=0)([a, b])
    assert batch["sample_ids"] == ["s#1", "s#2", "t#9"] and batch["input_ids"].shape[0] == 2
