"""One sequence per preference pair: the prompt and its images once, the two answers after it, isolated.

Layout of a pair with prompt P0..P3 (image tokens inside), chosen C0 C1 and rejected R0 R1 R2, and what each
answer token is scored from (the logit of the position before it):

    input_ids      P0 P1 P2 P3 C0 C1 R0 R1 R2
    position_ids   0  1  2  3  4  5  4  5  6      the rejected answer restarts at the prompt end; for Qwen-VL each
                                                  mRoPE row comes from the rope index of prompt + that answer
    startend rows  9  9  9  9  6  6  9  9  9      column j is hidden from rows >= value: the rejected rows never
                                                  see the chosen answer; causal everywhere else
    scored from    C0<-P3  C1<-C0  R0<-P3  R1<-R0  R2<-R1

so the log-probabilities equal those of the two full sequences run apart (the plain 2N batch), while the vision
tower and the prompt run once. A pair whose rejected side has its own prompt or images is laid out as two
isolated sequences in the same row instead (`[prompt chosen | prompt' rejected]`). Several pairs share a row
under MIXToken like SFT samples; `join_pairs` concatenates them, `pair_batch` pads the rows.

Instead of `labels`, a pair batch carries the answer tokens to score: `answer_index` (flat position of the logit
in the [rows, L] batch), `answer_targets` (the token) and `answer_segment` (2 x pair + side, side 0 = chosen).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from paddlemix.datasets.conversation import SampleError
from paddlemix.datasets.packing import PositionFn
from paddlemix.datasets.pairs import Pair
from paddlemix.processors.chat_template import ChatTemplate
from paddlemix.processors.sample_processor import IGNORE_INDEX, SampleProcessor

ANSWER_INDEX = "answer_index"
ANSWER_TARGETS = "answer_targets"
ANSWER_SEGMENT = "answer_segment"
PAIR_COUNT = "pair_count"
PAIR_IDS = "pair_ids"  # "file#index" of each pair in batch order (the key of precomputed reference log-probs)
PAIR_KEYS = (ANSWER_INDEX, ANSWER_TARGETS, ANSWER_SEGMENT, PAIR_COUNT, PAIR_IDS)


def answer_span(labels: Sequence[int]) -> tuple[int, int]:
    """[start, end) of the last run of labelled tokens (the final answer with its end-of-turn token) of one side;
    earlier answers are context."""
    marked = np.flatnonzero(np.asarray(labels) != IGNORE_INDEX)
    if len(marked) == 0:
        raise SampleError("no answer tokens to score")
    gaps = np.flatnonzero(np.diff(marked) > 1)
    start = marked[gaps[-1] + 1] if len(gaps) else marked[0]
    return int(start), int(marked[-1]) + 1


def _scored(start: int, end: int, logit_of: Any, ids: np.ndarray, side: int) -> tuple[np.ndarray, ...]:
    tokens = np.arange(start, end)
    return (np.asarray([logit_of(t) for t in tokens], dtype="int64"), ids[start:end].astype("int64"),
            np.full(len(tokens), side, dtype="int64"))  # fmt: skip


def lay_out(chosen: np.ndarray, rejected: np.ndarray, spans: tuple, pos_c: np.ndarray, pos_r: np.ndarray,
            one_sequence: bool) -> dict[str, np.ndarray]:  # fmt: skip
    """The row of one pair from its two full sequences (ids, answer spans (start, end) and positions [R, n]);
    `one_sequence` shares the prompt (both sides must start with the same ids up to their answers)."""
    (a, e_c), (a_r, e_r) = spans
    if one_sequence:
        n_c = e_c - a
        ids = np.concatenate([chosen[:e_c], rejected[a:e_r]])
        positions = np.concatenate([pos_c[:, :e_c], pos_r[:, a:e_r]], axis=-1)
        ends = np.concatenate([np.full(a, len(ids)), np.full(n_c, e_c), np.full(e_r - a, len(ids))])
        c = _scored(a, e_c, lambda t: t - 1, chosen, 0)
        r = _scored(a, e_r, lambda t: a - 1 if t == a else e_c + t - a - 1, rejected, 1)
    else:
        ids = np.concatenate([chosen[:e_c], rejected[:e_r]])
        positions = np.concatenate([pos_c[:, :e_c], pos_r[:, :e_r]], axis=-1)
        ends = np.concatenate([np.full(e_c, e_c), np.full(e_r, len(ids))])
        c = _scored(a, e_c, lambda t: t - 1, chosen, 0)
        r = _scored(a_r, e_r, lambda t: e_c + t - 1, rejected, 1)
    return {
        "input_ids": ids.astype("int64"),
        "position_ids": positions.astype("int64"),
        "mask_ends": ends.astype("int32"),
        ANSWER_INDEX: np.concatenate([c[0], r[0]]),
        ANSWER_TARGETS: np.concatenate([c[1], r[1]]),
        ANSWER_SEGMENT: np.concatenate([c[2], r[2]]),  # local: the side; `join_pairs` adds 2 x pair
    }


class PairProcessor:
    """Encodes a `Pair` into its one-sequence row (or two sequences when the prompts differ), with positions.

    Callable like `SampleProcessor`, so `EncodedDataset` serves pairs unchanged: skips carry the reason (a side
    over `max_length`, an image-count mismatch, a pair whose row would exceed `max_length`).
    """

    def __init__(self, encoder: SampleProcessor, positions: PositionFn, one_sequence: bool = True):
        self.encoder = encoder
        self.positions = positions
        self.one_sequence = one_sequence
        self.max_length = encoder.max_length

    def _side(self, sample: Any, template: ChatTemplate, vision: dict) -> tuple[np.ndarray, tuple[int, int]]:
        ids, labels = self.encoder._encode(sample, self.encoder.training_segments(sample, template), vision)
        return np.asarray(ids, dtype="int64"), answer_span(labels)

    def _sides(self, pair: Pair, template: ChatTemplate, vision_c: dict, vision_r: dict) -> tuple:
        chosen, span_c = self._side(pair.chosen_sample(), template, vision_c)
        rejected, span_r = self._side(pair.rejected_sample(), template, vision_r)
        shared = (self.one_sequence and pair.shared_prompt and span_c[0] == span_r[0]
                  and np.array_equal(chosen[: span_c[0]], rejected[: span_r[0]]))  # fmt: skip
        length = span_c[1] + span_r[1] - (span_c[0] if shared else 0)
        if length > self.max_length:
            raise SampleError(
                f"the pair takes {length} tokens in one row (chosen {span_c[1]}, rejected {span_r[1]}"
                f"{', prompt shared' if shared else ''}), more than max_length {self.max_length}"
            )
        return chosen, rejected, (span_c, span_r), shared

    def __call__(self, pair: Pair, template: ChatTemplate) -> dict[str, Any]:
        vision_c = self.encoder.images(pair.images)
        vision_r = vision_c if pair.rejected_images is None else self.encoder.images(pair.rejected_images)
        chosen, rejected, spans, shared = self._sides(pair, template, vision_c, vision_r)
        pos_c = self.positions(chosen[: spans[0][1]], vision_c.get("image_grid_thw"))
        pos_r = self.positions(rejected[: spans[1][1]], vision_r.get("image_grid_thw"))
        out = lay_out(chosen, rejected, spans, np.atleast_2d(pos_c), np.atleast_2d(pos_r), shared)
        images = [v for v in ([vision_c] if shared else [vision_c, vision_r]) if v]
        if images:
            out["pixel_values"] = np.concatenate([v["pixel_values"] for v in images])
            out["image_grid_thw"] = np.concatenate([v["image_grid_thw"] for v in images])
        out[PAIR_COUNT] = 1
        out[PAIR_IDS] = [f"{pair.source}#{pair.index}"]
        return out

    def length(self, pair: Pair, template: ChatTemplate) -> int:
        """Tokens of the pair's row, from image headers instead of decoded pixels."""
        grids = {"image_grid_thw": [self.encoder.vision.grid_for_size(*self.encoder.reader.size(r))
                                    for r in pair.images]}  # fmt: skip
        other = grids
        if pair.rejected_images is not None:
            other = {"image_grid_thw": [self.encoder.vision.grid_for_size(*self.encoder.reader.size(r))
                                        for r in pair.rejected_images]}  # fmt: skip
        _, _, (span_c, span_r), shared = self._sides(pair, template, grids, other)
        return span_c[1] + span_r[1] - (span_c[0] if shared else 0)


def join_pairs(pairs: Sequence[dict[str, Any]], positions: Any = None) -> dict[str, Any]:
    """Several encoded pairs in one row (MIXToken): indices shift by the pair's offset, segments by its number.
    `positions` is unused (pairs carry their own); the argument keeps the signature of `build_pack`."""
    offsets = np.cumsum([0] + [len(p["input_ids"]) for p in pairs])
    counts = np.cumsum([0] + [int(p[PAIR_COUNT]) for p in pairs])
    out: dict[str, Any] = {
        "input_ids": np.concatenate([p["input_ids"] for p in pairs]),
        "position_ids": np.concatenate([p["position_ids"] for p in pairs], axis=-1),
        "mask_ends": np.concatenate([p["mask_ends"] + o for p, o in zip(pairs, offsets)]).astype("int32"),
        ANSWER_INDEX: np.concatenate([p[ANSWER_INDEX] + o for p, o in zip(pairs, offsets)]),
        ANSWER_TARGETS: np.concatenate([p[ANSWER_TARGETS] for p in pairs]),
        ANSWER_SEGMENT: np.concatenate([p[ANSWER_SEGMENT] + 2 * c for p, c in zip(pairs, counts)]),
        PAIR_COUNT: int(counts[-1]),
        PAIR_IDS: [pid for p in pairs for pid in p.get(PAIR_IDS, ["?"])],
        "sample_ids": [sid for p in pairs for sid in (p.get("sample_ids") or [str(p.get("sample_id", "?"))])],
    }
    images = [p for p in pairs if "pixel_values" in p]
    if images:
        out["pixel_values"] = np.concatenate([p["pixel_values"] for p in images])
        out["image_grid_thw"] = np.concatenate([p["image_grid_thw"] for p in images])
    return out


def pair_batch(rows: Sequence[dict[str, Any]], pad_token_id: int, length: int) -> dict[str, Any]:
    """Rows of pairs as a padded batch: ids [B, L], positions [R, B, L], FlashMask row indices [B, 1, L] and the
    flat answer indices / targets / segments over all rows (segments numbered across the batch)."""
    batch_size, position_rows = len(rows), rows[0]["position_ids"].shape[0]
    batch: dict[str, Any] = {
        "input_ids": np.full((batch_size, length), pad_token_id, dtype="int64"),
        "position_ids": np.zeros((position_rows, batch_size, length), dtype="int64"),
        "attn_mask_startend_row_indices": np.zeros((batch_size, 1, length), dtype="int32"),
    }
    index, targets, segments, pairs = [], [], [], 0
    for r, row in enumerate(rows):
        n = len(row["input_ids"])
        batch["input_ids"][r, :n] = row["input_ids"]
        batch["position_ids"][:, r, :n] = row["position_ids"]
        batch["attn_mask_startend_row_indices"][r, 0] = np.concatenate(
            [row["mask_ends"], np.arange(n + 1, length + 1)]
        )
        index.append(row[ANSWER_INDEX] + r * length)
        targets.append(row[ANSWER_TARGETS])
        segments.append(row[ANSWER_SEGMENT] + 2 * pairs)
        pairs += int(row[PAIR_COUNT])
    batch[ANSWER_INDEX] = np.concatenate(index).astype("int64")
    batch[ANSWER_TARGETS] = np.concatenate(targets).astype("int64")
    batch[ANSWER_SEGMENT] = np.concatenate(segments).astype("int64")
    batch[PAIR_COUNT] = np.asarray(pairs, dtype="int64")
    batch[PAIR_IDS] = [pid for row in rows for pid in row.get(PAIR_IDS, ["?"] * int(row[PAIR_COUNT]))]
    images = [row for row in rows if "pixel_values" in row]
    if images:
        batch["pixel_values"] = np.concatenate([row["pixel_values"] for row in images]).astype("float32")
        batch["image_grid_thw"] = np.concatenate([row["image_grid_thw"] for row in images]).astype("int64")
    return batch
