from __future__ import annotations

import numpy as np
import pytest

from paddlemix.datasets.packing import (
    BestFitPacker,
    PackedDataset,
    build_pack,
    fill_ratio,
    next_fit,
    order_length_correlation,
    pack_batch,
    startend_row_indices,
)


def dense_mask(seq_lens: list[int], length: int) -> np.ndarray:
    """Oracle: visible[q, k] for block-diagonal causal attention; pads form one-token blocks."""
    block = np.concatenate(
        [np.full(n, b) for b, n in enumerate(seq_lens)] + [np.arange(length - sum(seq_lens)) + 1000]
    )
    q, k = np.meshgrid(np.arange(length), np.arange(length), indexing="ij")
    return (k <= q) & (block[q] == block[k])


@pytest.mark.parametrize("capacity, window, n, seed", [(64, 8, 100, 0), (128, 1000, 300, 1), (50, 1, 40, 2)])
def test_every_item_once_and_capacity_respected(capacity: int, window: int, n: int, seed: int) -> None:
    lengths = np.random.default_rng(seed).integers(1, capacity + 1, n).tolist()
    packs = list(BestFitPacker(capacity, window).pack(enumerate(lengths)))
    assert sorted(i for p in packs for i in p) == list(range(n))
    assert all(sum(lengths[i] for i in p) <= capacity for p in packs)


def test_next_fit_keeps_file_order() -> None:
    assert next_fit([3, 4, 2, 5, 1], 7) == [[0, 1], [2, 3], [4]]


def test_best_fit_beats_next_fit_on_a_skewed_mix() -> None:
    rng = np.random.default_rng(0)
    lengths = np.clip(rng.lognormal(6.2, 0.6, 3000), 50, 4000).astype(int).tolist()
    ours = list(BestFitPacker(4096, 1000).pack(enumerate(lengths)))
    assert fill_ratio(ours, lengths, 4096) > fill_ratio(next_fit(lengths, 4096), lengths, 4096) + 0.05
    assert fill_ratio(ours, lengths, 4096) >= 0.97


def test_deterministic_and_too_long_raises() -> None:
    lengths = [5, 9, 3, 7, 2]
    assert list(BestFitPacker(10, 2).pack(enumerate(lengths))) == list(BestFitPacker(10, 2).pack(enumerate(lengths)))
    with pytest.raises(ValueError, match="more than the capacity"):
        list(BestFitPacker(8, 2).pack(enumerate(lengths)))


@pytest.mark.parametrize("seq_lens, length", [([3, 2], 8), ([4], 4), ([1, 1, 5], 10), ([6, 2], 8)])
def test_startend_rows_encode_block_diagonal_causal_mask(seq_lens: list[int], length: int) -> None:
    ends = startend_row_indices(seq_lens, length)
    q, k = np.meshgrid(np.arange(length), np.arange(length), indexing="ij")
    visible = (k <= q) & (q < ends[k])
    np.testing.assert_array_equal(visible, dense_mask(seq_lens, length))


def sample(n: int, image: int | None = None) -> dict:
    out = {"input_ids": np.arange(n) + 10 * n, "labels": np.r_[np.arange(1, n) + 10 * n, -100]}
    if image is not None:
        out["pixel_values"] = np.full((4, 3), image, dtype="float32")
        out["image_grid_thw"] = np.array([[1, 2, 2]])
    return out


def positions(input_ids: np.ndarray, grid) -> np.ndarray:
    return np.tile(np.arange(len(input_ids)), (3, 1))


def test_build_pack_restarts_positions_and_keeps_image_order() -> None:
    pack = build_pack([sample(3, image=1), sample(2), sample(4, image=2)], positions)
    assert pack["position_ids"][0].tolist() == [0, 1, 2, 0, 1, 0, 1, 2, 3]
    assert pack["seq_lens"].tolist() == [3, 2, 4]
    assert pack["pixel_values"][:, 0].tolist() == [1] * 4 + [2] * 4
    assert pack["labels"].tolist()[2] == -100 and pack["labels"].tolist()[4] == -100
    batch = pack_batch([pack, build_pack([sample(2)], positions)], pad_token_id=0, length=12)
    assert batch["input_ids"].shape == (2, 12) and batch["position_ids"].shape == (3, 2, 12)
    assert batch["attn_mask_startend_row_indices"].shape == (2, 1, 12)
    assert (batch["labels"][1, 2:] == -100).all()


class CountingDataset:
    """Stands in for EncodedDataset; records which items had their length computed or were encoded."""

    def __init__(self, lengths: list[int]):
        self.lengths, self.length_calls, self.encoded = lengths, 0, []

    def __len__(self) -> int:
        return len(self.lengths)

    def length(self, i: int) -> int:
        self.length_calls += 1
        return self.lengths[i % len(self.lengths)]  # item numbers past the length name later epochs

    def encode(self, i: int) -> dict:
        self.encoded.append(i % len(self.lengths))
        return sample(self.lengths[i % len(self.lengths)])

    def take_skips(self) -> list[str]:
        return []


@pytest.mark.parametrize("size", [1_000, 100_000])
def test_first_pack_needs_a_bounded_number_of_lengths(size: int) -> None:
    """The first pack waits for the shuffle buffer (one window of packs), never for the whole data set."""
    data = CountingDataset(np.random.default_rng(0).integers(10, 60, size).tolist())
    first = next(iter(PackedDataset(data, 128, positions, seed=0, window=50)))
    assert data.length_calls in (200, 250)  # whole windows of 50 samples, the same for both sizes
    assert sum(first["seq_lens"]) <= 128


def test_skip_continues_with_the_same_packs_without_encoding_skipped_ones() -> None:
    lengths = np.random.default_rng(1).integers(10, 60, 300).tolist()
    full = iter(PackedDataset(CountingDataset(lengths), 128, positions, seed=3, window=40))
    expected = [next(full)["input_ids"].tolist() for _ in range(30)][10:]
    resumed_data = CountingDataset(lengths)
    resumed = iter(PackedDataset(resumed_data, 128, positions, seed=3, window=40, skip_packs=10))
    got = [next(resumed)["input_ids"].tolist() for _ in range(20)]
    assert got == expected
    assert len(resumed_data.encoded) == sum(len(p) for p in _plans(lengths)[10:30])


def _plans(lengths: list[int]) -> list[list[int]]:
    plans = PackedDataset(CountingDataset(lengths), 128, positions, seed=3, window=40).stream()
    return [next(plans) for _ in range(30)]


def test_epochs_reshuffle() -> None:
    lengths = [30] * 40
    plans = PackedDataset(CountingDataset(lengths), 120, positions, seed=0, window=40).plans()
    first, second = [next(plans) for _ in range(10)], [next(plans) for _ in range(10)]
    assert sorted(i for p in first for i in p) == list(range(40))
    assert sorted(i for p in second for i in p) == list(range(40, 80))  # epoch 1's items: its own draw of the mix
    assert [[i % 40 for i in p] for p in first] != [[i % 40 for i in p] for p in second]


def test_stream_order_carries_no_length_information() -> None:
    """Packs reach the trainer shuffled, with no trend of the mean sample length along the stream (three
    epochs of LLaVA-like lengths), in the same order for the same seed."""
    lengths = np.clip(np.random.default_rng(1).lognormal(6.2, 0.7, 6000), 16, 4096).astype(int).tolist()
    dataset = PackedDataset(CountingDataset(lengths), 4096, positions, seed=1, window=300)
    plans, stream = dataset.plans(), dataset.stream()
    trained = [next(stream) for _ in range(2700)]
    planned = [next(plans) for _ in range(60)]
    assert sum(a == b for a, b in zip(planned, trained)) < 5
    assert abs(order_length_correlation(trained, lengths * 4)) <= 0.05  # item numbers of epoch e: e * n + i
    again = PackedDataset(CountingDataset(lengths), 4096, positions, seed=1, window=300).stream()
    other = PackedDataset(CountingDataset(lengths), 4096, positions, seed=2, window=300).stream()
    assert [next(again) for _ in range(50)] == trained[:50] != [next(other) for _ in range(50)]


def test_order_length_correlation_oracle() -> None:
    lengths = [10, 20, 30, 40]
    assert order_length_correlation([[3], [2], [1], [0]], lengths) == pytest.approx(-1.0)
    assert order_length_correlation([[0, 3], [1], [2]], lengths) == pytest.approx(0.5)  # means 25, 20, 30


@pytest.mark.parametrize("workers, group", [(2, 1), (3, 2)])
def test_loader_workers_rebuild_the_same_stream(monkeypatch, workers: int, group: int) -> None:
    """Worker w yields the packs of groups w, w + workers, ...; the loader asks its workers in turn for one
    group (batch) each, so interleaving them gives the single-process stream, also after a resume skip."""
    import types

    import paddle

    lengths = np.random.default_rng(2).integers(10, 60, 200).tolist()

    def packs(worker: int | None, skip: int) -> list[list[int]]:
        info = None if worker is None else types.SimpleNamespace(num_workers=workers, id=worker)
        monkeypatch.setattr(paddle.io, "get_worker_info", lambda: info)
        data = PackedDataset(CountingDataset(lengths), 128, positions, seed=4, window=30, skip_packs=skip,
                             group_size=group)  # fmt: skip
        it = iter(data)
        return [next(it)["seq_lens"].tolist() for _ in range(6 * group)]

    for skip in (0, 4 * group):
        single = packs(None, skip)
        per_worker = [packs(w, skip) for w in range(workers)]
        interleaved = []
        for g in range(6):
            interleaved += per_worker[g % workers][(g // workers) * group : (g // workers + 1) * group]
        assert interleaved == single[: len(interleaved)]
