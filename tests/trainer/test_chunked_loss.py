from __future__ import annotations

import numpy as np
import paddle
import paddle.nn.functional as F
import pytest

from paddlemix.trainer.chunked_loss import chunked_lm_loss


def reference(head, hidden, labels):
    """Full logits, then the mean over labelled tokens (the models' own loss reduction)."""
    logits = head(hidden).reshape([-1, head.weight.shape[-1]])
    labels = labels.reshape([-1])
    ce = F.cross_entropy(logits, labels.clip(min=0), reduction="none").reshape([-1])
    mask = (labels != -100).astype("float32")
    return (ce * mask).sum() / mask.sum()


def run(fn, head, hidden_np: np.ndarray, labels: np.ndarray):
    head.clear_gradients()
    hidden = paddle.to_tensor(hidden_np)
    hidden.stop_gradient = False
    loss = fn(head, hidden, paddle.to_tensor(labels))
    loss.backward()
    return float(loss), hidden.grad.numpy(), head.weight.grad.numpy()


@pytest.mark.parametrize("tokens, vocab, chunk", [(37, 50, 8), (64, 1000, 64), (5, 7, 100)])
def test_loss_and_gradients_equal_the_full_logits_path(tokens: int, vocab: int, chunk: int) -> None:
    rng = np.random.default_rng(tokens)
    labels = rng.integers(0, vocab, (2, tokens))
    labels[:, : tokens // 3] = -100
    hidden = rng.normal(size=(2, tokens, 16)).astype("float32")
    head = paddle.nn.Linear(16, vocab)
    loss_a, dh_a, dw_a = run(reference, head, hidden, labels)
    loss_b, dh_b, dw_b = run(lambda h, x, y: chunked_lm_loss(h, x, y, chunk_size=chunk), head, hidden, labels)
    assert loss_b == pytest.approx(loss_a, abs=1e-5)
    np.testing.assert_allclose(dh_b, dh_a, atol=1e-6)
    np.testing.assert_allclose(dw_b, dw_a, atol=1e-6)


def test_no_labelled_position_gives_zero_loss() -> None:
    head = paddle.nn.Linear(4, 10)
    loss = chunked_lm_loss(head, paddle.randn([1, 3, 4]), paddle.full([1, 3], -100, dtype="int64"))
    assert float(loss) == 0.0
