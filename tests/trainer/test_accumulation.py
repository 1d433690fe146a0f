"""StepLoss and the gradient rescale: micro-batches with very different label counts, run the way paddleformers
runs them (backward per micro-batch, then gradients x 1/M), end with the gradients of one big batch's token mean."""

from __future__ import annotations

import numpy as np
import paddle
import paddle.nn.functional as F
import pytest

from paddlemix.trainer.accumulation import StepLoss, scale_gradients
from paddlemix.trainer.chunked_loss import token_loss_sum

VOCAB, HIDDEN = 11, 6


def batches(label_counts: list[int], seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """One row of 50 positions per micro-batch, `n` of them labelled."""
    rng = np.random.default_rng(seed)
    out = []
    for n in label_counts:
        hidden = rng.normal(size=(1, 50, HIDDEN)).astype("float32")
        labels = np.full((1, 50), -100, dtype="int64")
        labels[0, 50 - n :] = rng.integers(0, VOCAB, n)
        out.append((hidden, labels))
    return out


def big_batch_gradient(head: paddle.nn.Linear, micro: list) -> tuple[float, np.ndarray]:
    """Oracle: cross-entropy mean over every labelled position of all micro-batches at once."""
    head.clear_gradients()
    hidden = paddle.to_tensor(np.concatenate([h for h, _ in micro], axis=1))
    labels = paddle.to_tensor(np.concatenate([y for _, y in micro], axis=1))
    labels = labels.reshape([-1])
    ce = F.cross_entropy(head(hidden).reshape([-1, VOCAB]), labels.clip(min=0), reduction="none").reshape([-1])
    mask = (labels != -100).astype("float32")
    loss = (ce * mask).sum() / mask.sum()
    loss.backward()
    return float(loss), head.weight.grad.numpy().copy()


def accumulated_gradient(head: paddle.nn.Linear, micro: list) -> tuple[float, np.ndarray, StepLoss]:
    head.clear_gradients()
    step = StepLoss()
    for hidden, labels in micro:
        norm = step.begin_micro_batch(int((labels != -100).sum()), samples=1, rows=1)
        loss_sum = token_loss_sum(head(paddle.to_tensor(hidden)), paddle.to_tensor(labels))
        step.add_loss_sum(float(loss_sum))
        (loss_sum / norm).backward()
    if len(micro) > 1:
        scale_gradients(head.parameters(), 1.0 / len(micro))  # what paddleformers does after accumulating
    loss = step.finish()
    scale_gradients(head.parameters(), step.gradient_factor(len(micro)))
    return loss, head.weight.grad.numpy().copy(), step


@pytest.mark.parametrize("label_counts", [[4, 45], [45, 4], [1, 30, 7, 12], [0, 9]])
def test_accumulated_step_equals_the_big_batch(label_counts: list[int]) -> None:
    paddle.seed(0)
    head = paddle.nn.Linear(HIDDEN, VOCAB)
    micro = batches(label_counts)
    expected_loss, expected_grad = big_batch_gradient(head, micro)
    loss, grad, step = accumulated_gradient(head, micro)
    assert loss == pytest.approx(expected_loss, rel=1e-6)
    np.testing.assert_allclose(grad, expected_grad, rtol=1e-5, atol=1e-7)
    assert step.total[1:] == [sum(label_counts), len(label_counts), len(label_counts)]


def test_mean_of_micro_batch_means_is_not_the_big_batch() -> None:
    """The fault this replaces: with answers of 4 and 45 tokens the short one weighed 0.5 instead of 4 / 49."""
    paddle.seed(0)
    head = paddle.nn.Linear(HIDDEN, VOCAB)
    micro = batches([4, 45])
    expected_loss, _ = big_batch_gradient(head, micro)
    means = [float(token_loss_sum(head(paddle.to_tensor(h)), paddle.to_tensor(y))) / int((y != -100).sum())
             for h, y in micro]  # fmt: skip
    assert abs(np.mean(means) - expected_loss) > 1e-3


def test_single_micro_batch_needs_no_rescale() -> None:
    step = StepLoss()
    step.begin_micro_batch(37, samples=2, rows=1)
    step.add_loss_sum(74.0)
    assert step.finish() == 2.0 and step.gradient_factor(1) == 1.0


def test_stage3_slices_are_scaled_where_the_gradient_lives() -> None:
    """Sharding stage 3 keeps a split weight's gradient in `bw_storage` and releases `grad`, so paddleformers'
    1 / M skips it: the slice gets factor / M, every other gradient the factor (it already had its 1 / M)."""
    split = paddle.create_parameter([4], "float32")
    split.bw_storage = paddle.full([2], 3.0)
    plain = paddle.create_parameter([2], "float32")
    plain.grad = paddle.full([2], 5.0)
    scale_gradients([split, plain], 0.5, accumulation_steps=2)
    assert split.bw_storage.tolist() == [0.75, 0.75] and plain.grad.tolist() == [2.5, 2.5]
