"""`PreferenceStage` bookkeeping: a step's metrics over its micro-batches (and ranks) equal those of one batch of
the same pairs; evaluation counts each pair once however often it is evaluated; the oracle is numpy on the same
log-probs."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import paddle
import pytest

from paddlemix.trainer.dpo_loss import PreferenceLoss
from paddlemix.trainer.preference import PreferenceStage

VOCAB, LENGTH = 7, 6
rng = np.random.default_rng(0)
LOGITS = rng.normal(size=(4, LENGTH, VOCAB)).astype("float32")  # one row per pair: [chosen | rejected]
REF = rng.normal(-8, 2, size=8).astype("float32")  # reference log-probs of the 4 pairs' 8 answers


class RowModel(paddle.nn.Layer):
    """Logits looked up by the row id in input_ids[:, 0] (so any subset of rows is the same model)."""

    def forward(self, input_ids, **kwargs):
        return SimpleNamespace(logits=paddle.to_tensor(LOGITS)[input_ids[:, 0]])


def batch(rows: list[int]) -> dict:
    """Pairs `rows`, each scored from the logits at positions 0-1 (chosen) and 3-4 (rejected) of its row."""
    index, targets, segments = [], [], []
    for r, row in enumerate(rows):
        for side, positions in enumerate(((0, 1), (3, 4))):
            index += [r * LENGTH + p for p in positions]
            targets += [(row + p) % VOCAB for p in positions]
            segments += [2 * r + side] * 2
    return {"input_ids": paddle.to_tensor(np.array([[row] * LENGTH for row in rows])),
            "answer_index": paddle.to_tensor(index), "answer_targets": paddle.to_tensor(targets),
            "answer_segment": paddle.to_tensor(segments), "pair_count": len(rows),
            "pair_ids": [f"p#{row}" for row in rows]}  # fmt: skip


def stage() -> PreferenceStage:
    def reference(model, inputs):
        rows = [int(p.split("#")[1]) for p in inputs["pair_ids"]]
        return paddle.to_tensor(np.stack([REF[2 * r : 2 * r + 2] for r in rows]).reshape(-1))

    return PreferenceStage(PreferenceLoss("sigmoid", 0.1, ftx=0.5), reference)


def test_step_metrics_over_micro_batches_equal_one_batch() -> None:
    model = RowModel()
    whole, parts = stage(), stage()
    whole(model, batch([0, 1, 2, 3]))
    whole.finish_step(lambda v: v)
    parts(model, batch([0, 1]))
    parts(model, batch([2, 3]))
    parts.finish_step(lambda v: v)
    expected, got = whole.pop_metrics(), parts.pop_metrics()
    assert set(expected) == {"rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins",
                             "logps/chosen", "logps/rejected", "logps/accuracies", "sft_loss"}  # fmt: skip
    assert got == pytest.approx(expected, abs=1e-6) and parts.pop_metrics() == {}
    logp = np.log(np.exp(LOGITS) / np.exp(LOGITS).sum(-1, keepdims=True))
    chosen = [logp[r, 0, r % VOCAB] + logp[r, 1, (r + 1) % VOCAB] for r in range(4)]  # scored at positions 0, 1
    rewards = 0.1 * (np.array(chosen) - REF[0::2])
    assert expected["logps/chosen"] == pytest.approx(np.mean(chosen), abs=1e-5)
    assert expected["rewards/chosen"] == pytest.approx(rewards.mean(), abs=1e-5)


def test_eval_counts_each_pair_once() -> None:
    model, once, twice = RowModel(), stage(), stage()
    once(model, batch([0, 1, 2]), training=False)
    twice(model, batch([0, 1]), training=False)
    twice(model, batch([1, 2]), training=False)  # a distributed sampler repeats pair 1
    a, b = once.eval_metrics(once.take_eval_rows()), twice.eval_metrics(twice.take_eval_rows())
    assert b == pytest.approx(a, abs=1e-6) and "eval_rewards/margins" in a
    assert once.take_eval_rows() == {} and once.pop_metrics() == {}  # eval leaves the training sums alone
