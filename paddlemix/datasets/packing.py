"""MIXToken: several samples share one row of up to `max_length` tokens instead of being padded.

Plan: best-fit decreasing over a bounded window of samples, using each sample's exact length after image-token
expansion (computed from image headers and cached tokenization, no pixel decoding). Bins that cannot take another
sample of the window leave; the others stay open for the next window, so the fill stays high in a stream.

Layout of one pack with samples A (3 tokens, one image token `I`) and B (2 tokens), max_length 8:

    input_ids      A0 I  A2 B0 B1 pad pad pad
    labels         A1 A2 -- B1 --  --  --  --     targets shifted inside each sample; -- = ignored (-100)
    position_ids   0  1  2  0  1   0   0   0      restart per sample; for Qwen-VL each of the 3 mRoPE rows
                                                  comes from the sample's own rope index
    startend rows  3  3  3  5  5   6   7   8      column j is hidden from rows >= value: A never sees B and
                                                  B never sees A (causal inside each sample); pads see pads

`attn_mask_startend_row_indices` is FlashMask's O(L) encoding of that block-diagonal causal mask; on CPU the model
expands it to the equivalent dense mask.
"""

from __future__ import annotations

import bisect
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import paddle

from paddlemix.datasets.conversation import SampleError
from paddlemix.datasets.loader_guard import stop_run_on_failure
from paddlemix.processors.sample_processor import IGNORE_INDEX
from paddlemix.utils.errors import UserError

logger = logging.getLogger(__name__)

PositionFn = Callable[..., np.ndarray]  # (input_ids, image_grid_thw, **videos) -> [P, L] (ModelAdapter.position_fn)


class BestFitPacker:
    """Streaming best-fit-decreasing bin packing over windows of (id, length) items."""

    def __init__(self, capacity: int, window: int = 1000):
        if window < 1:
            raise ValueError("window must be at least 1")
        self.capacity = capacity
        self.window = window
        self._free: list[tuple[int, int]] = []  # sorted (free space, bin number)
        self._bins: dict[int, list[int]] = {}
        self._next = 0

    def _place(self, item: int, length: int) -> None:
        k = bisect.bisect_left(self._free, (length, -1))
        if k < len(self._free):
            free, number = self._free.pop(k)
        else:
            free, number = self.capacity, self._next
            self._bins[number] = []
            self._next += 1
        self._bins[number].append(item)
        bisect.insort(self._free, (free - length, number))

    def _emit(self, keep_if_free_at_least: int | None) -> list[list[int]]:
        """Remove and return bins with less free space than the threshold (all bins when it is None)."""
        out, kept = [], []
        for free, number in self._free:
            if keep_if_free_at_least is not None and free >= keep_if_free_at_least:
                kept.append((free, number))
            else:
                out.append((number, self._bins.pop(number)))
        # Too many half-empty bins would make memory grow with the stream; the fullest go first.
        overflow = len(kept) - self.window
        if overflow > 0:
            out += [(number, self._bins.pop(number)) for _, number in kept[:overflow]]
            kept = kept[overflow:]
        self._free = kept
        return [items for _, items in sorted(out)]

    def add_window(self, items: Sequence[tuple[int, int]]) -> list[list[int]]:
        """Place one window of items (longest first) and return the packs that are done."""
        for item, length in sorted(items, key=lambda x: -x[1]):
            if length > self.capacity:
                raise ValueError(f"item {item} has {length} tokens, more than the capacity {self.capacity}")
            self._place(item, length)
        smallest = min((length for _, length in items), default=0)
        return self._emit(keep_if_free_at_least=smallest)

    def flush(self) -> list[list[int]]:
        return self._emit(keep_if_free_at_least=None)

    def pack(self, items: Iterable[tuple[int, int]]) -> Iterator[list[int]]:
        """All packs for a stream of (id, length) items."""
        window: list[tuple[int, int]] = []
        for item in items:
            window.append(item)
            if len(window) == self.window:
                yield from self.add_window(window)
                window = []
        if window:
            yield from self.add_window(window)
        yield from self.flush()


def next_fit(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """The baseline MIXToken improves on: fill packs in file order, open a new one when the next item does not fit."""
    packs: list[list[int]] = [[]]
    free = capacity
    for i, n in enumerate(lengths):
        if n > free:
            packs.append([])
            free = capacity
        packs[-1].append(i)
        free -= n
    return packs


def fill_ratio(packs: Sequence[Sequence[int]], lengths: dict[int, int] | Sequence[int], capacity: int) -> float:
    """Real tokens / (packs x capacity)."""
    real = sum(lengths[i] for pack in packs for i in pack)
    return real / max(len(packs) * capacity, 1)


def _ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 0..n-1, ties sharing their mean rank."""
    order = np.argsort(values, kind="stable")
    ranks = np.empty(len(values))
    ranks[order] = np.arange(len(values))
    for v in np.unique(values):
        tied = values == v
        ranks[tied] = ranks[tied].mean()
    return ranks


def order_length_correlation(
    packs: Sequence[Sequence[int]], lengths: dict[int, int] | Sequence[int], statistic: Callable = np.mean
) -> float:
    """Spearman rank correlation between a pack's position in the stream and its mean (or other `statistic`)
    sample length: 0 when the order carries no length information, -1 when it falls steadily along the stream."""
    mean_length = np.asarray([statistic([lengths[i] for i in pack]) for pack in packs], dtype="float64")
    if len(mean_length) < 2 or np.all(mean_length == mean_length[0]):
        return 0.0
    position, length = _ranks(np.arange(len(mean_length), dtype="float64")), _ranks(mean_length)
    return float(np.corrcoef(position, length)[0, 1])


VIDEO_POSITION_KEYS = ("video_grid_thw", "second_per_grid_ts")
# Per-sample vision arrays, concatenated in sample order by packs and batches.
VISION_KEYS = ("pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw", "second_per_grid_ts")
VISION_DTYPES = {"pixel_values": "float32", "image_grid_thw": "int64", "pixel_values_videos": "float32",
                 "video_grid_thw": "int64", "second_per_grid_ts": "float32"}  # fmt: skip


def sample_positions(positions: PositionFn, sample: dict[str, Any]) -> np.ndarray:
    """Position ids of one encoded sample, with its videos' grids when it has videos."""
    video = {k: sample[k] for k in VIDEO_POSITION_KEYS if k in sample}
    return positions(sample["input_ids"], sample.get("image_grid_thw"), **video)


def concat_vision(items: Sequence[dict[str, Any]], cast: bool = False) -> dict[str, np.ndarray]:
    """The vision arrays of samples (or packs) joined in order: images, then videos (`VISION_KEYS`)."""
    out = {}
    for key in VISION_KEYS:
        parts = [item[key] for item in items if key in item]
        if parts:
            out[key] = np.concatenate(parts).astype(VISION_DTYPES[key]) if cast else np.concatenate(parts)
    return out


def build_pack(samples: Sequence[dict[str, np.ndarray]], positions: PositionFn) -> dict[str, np.ndarray]:
    """Concatenate encoded samples into one row; positions are computed per sample, so they restart."""
    out: dict[str, Any] = {
        "input_ids": np.concatenate([s["input_ids"] for s in samples]),
        "labels": np.concatenate([s["labels"] for s in samples]),
        "position_ids": np.concatenate([sample_positions(positions, s) for s in samples], axis=-1),  # [3, L] mRoPE
        "seq_lens": np.asarray([len(s["input_ids"]) for s in samples], dtype="int64"),
        "sample_id": ",".join(str(s.get("sample_id", "?")) for s in samples),
        "sample_ids": [str(s.get("sample_id", "?")) for s in samples],
    }
    out.update(concat_vision(samples))
    return out


def startend_row_indices(seq_lens: Sequence[int], length: int) -> np.ndarray:
    """For each column, the first row that must not see it: the end of its sample (pads: the next row)."""
    ends = np.cumsum(seq_lens)
    out = np.repeat(ends, seq_lens)
    return np.concatenate([out, np.arange(len(out) + 1, length + 1)]).astype("int32")


def pack_batch(packs: Sequence[dict[str, np.ndarray]], pad_token_id: int, length: int) -> dict[str, np.ndarray]:
    """Stack packs into [rows, length] arrays with positions [3, rows, length] and FlashMask row indices."""
    rows = len(packs)
    position_rows = packs[0]["position_ids"].shape[0]
    batch = {
        "input_ids": np.full((rows, length), pad_token_id, dtype="int64"),
        "labels": np.full((rows, length), IGNORE_INDEX, dtype="int64"),
        "position_ids": np.zeros((position_rows, rows, length), dtype="int64"),
        "attn_mask_startend_row_indices": np.zeros((rows, 1, length), dtype="int32"),
    }
    for r, pack in enumerate(packs):
        n = len(pack["input_ids"])
        batch["input_ids"][r, :n] = pack["input_ids"]
        batch["labels"][r, :n] = pack["labels"]
        batch["position_ids"][:, r, :n] = pack["position_ids"]
        batch["attn_mask_startend_row_indices"][r, 0] = startend_row_indices(pack["seq_lens"], length)
    batch.update(concat_vision(packs, cast=True))
    return batch


def shuffle_buffer(items: Iterable[Any], size: int, rng: np.random.Generator) -> Iterator[Any]:
    """Yield `items` in a seeded random order through a buffer of `size`: each new item takes the slot of a random
    buffered one, which leaves. The packer emits each window's packs longest first; a buffer at least as large as
    a window's packs removes any link between a pack's position and its length. Deterministic for a given rng."""
    buffer: list[Any] = []
    for item in items:
        if len(buffer) < size:
            buffer.append(item)
            continue
        j = int(rng.integers(size))
        buffer[j], item = item, buffer[j]
        yield item
    for j in rng.permutation(len(buffer)):
        yield buffer[j]


class PackedDataset(paddle.io.IterableDataset):
    """An endless stream of packs over an `EncodedDataset`, reshuffled each epoch; no up-front preprocessing.

    Packs leave in a seeded random order (`shuffle_buffer` of `window` packs). `skip_packs` fast-forwards by
    re-planning from lengths alone (no image decoding), so a resumed run continues with the same pack the
    interrupted one would have trained on next. With several loader workers, worker w builds the packs of the
    groups of `group_size` packs (the loader's batch size x data-parallel ranks) numbered w, w + workers, ...:
    the order in which the loader asks its workers for batches, so the stream is the same with or without workers.
    """

    def __init__(
        self,
        encoded: Any,
        max_length: int,
        positions: PositionFn,
        seed: int,
        window: int = 1000,
        skip_packs: int = 0,
        group_size: int = 1,
        build: Callable[[Sequence[dict[str, Any]], PositionFn], dict[str, Any]] = build_pack,
    ):
        super().__init__()
        self.build = build  # how encoded items join into one row (`pair_packing.join_pairs` for pairs)
        self.encoded = encoded
        self.max_length = max_length
        self.positions = positions
        self.seed = seed
        self.window = window
        self.skip_packs = skip_packs
        self.group_size = group_size

    def _lengths(self, order: Iterable[int]) -> Iterator[tuple[int, int]]:
        for i in order:
            try:
                yield i, self.encoded.length(int(i))
            except SampleError:  # logged and counted by the encoded dataset
                continue

    def packs_per_epoch(self, epoch: int = 0) -> int:
        """How many packs `epoch` of the stream makes, planned from sample lengths alone (no image decoded)."""
        return sum(1 for _ in BestFitPacker(self.max_length, self.window).pack(self._lengths(self.epoch_order(epoch))))

    def epoch_order(self, epoch: int) -> np.ndarray:
        """The items of `epoch` in packing order: a seeded permutation of that epoch's own draw of the mix (item
        numbers past one epoch's length name later epochs, whose fractional `sampling_rate` draws differ)."""
        n = len(self.encoded)
        return epoch * n + np.random.default_rng([self.seed, epoch]).permutation(n)

    def plans(self) -> Iterator[list[int]]:
        """Pack plans (lists of item ids) in packing order, epoch after epoch."""
        epoch = 0
        while True:
            packer = BestFitPacker(self.max_length, self.window)
            empty = True
            for plan in packer.pack(self._lengths(self.epoch_order(epoch))):
                empty = False
                yield plan
            if empty:
                raise UserError("no usable sample in the training data; see skipped_samples.jsonl for the reasons.")
            epoch += 1

    def stream(self) -> Iterator[list[int]]:
        """Pack plans in training order: `plans` through a seeded shuffle buffer of `window` packs."""
        return shuffle_buffer(self.plans(), self.window, np.random.default_rng([self.seed, 1 << 20]))

    def __iter__(self) -> Iterator[dict[str, Any]]:
        with stop_run_on_failure():  # in the data loader, a failure must end the run, not stall it
            yield from self._packs()

    def _packs(self) -> Iterator[dict[str, Any]]:
        worker = paddle.io.get_worker_info()
        workers, worker_id = (worker.num_workers, worker.id) if worker is not None else (1, 0)
        for k, plan in enumerate(self.stream()):
            if k < self.skip_packs or ((k - self.skip_packs) // self.group_size) % workers != worker_id:
                continue
            samples = []
            for i in plan:
                try:
                    samples.append(self.encoded.encode(i))
                except SampleError:
                    continue
            if samples:
                yield {**self.build(samples, self.positions), "skips": self.encoded.take_skips()}
