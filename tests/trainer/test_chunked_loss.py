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


@pytest.mark.parametrize("tokens, vocab, chunk", [(37, 50, 8), (64, 1000, 64), (5, 7, 100), (37, 50, 0)])
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


def test_chunked_only_from_the_measured_vocabulary() -> None:
    from paddlemix.trainer.chunked_loss import CHUNKED_LOSS_MIN_VOCAB, uses_chunked_loss

    assert not uses_chunked_loss(576, 256)  # the tiny models: full logits
    assert not uses_chunked_loss(CHUNKED_LOSS_MIN_VOCAB - 1, 256)
    assert uses_chunked_loss(CHUNKED_LOSS_MIN_VOCAB, 256) and uses_chunked_loss(151936, 256)
    assert not uses_chunked_loss(151936, 0)  # loss_chunk_size 0 turns it off


def test_trainer_chunk_size_follows_the_vocabulary() -> None:
    from types import SimpleNamespace

    from paddlemix.trainer.sft import loss_chunk_size

    def args(world_size: int) -> SimpleNamespace:
        return SimpleNamespace(
            runtime=SimpleNamespace(loss_chunk_size=256), training=SimpleNamespace(world_size=world_size)
        )

    def config(vocab: int) -> SimpleNamespace:
        return SimpleNamespace(text_config=SimpleNamespace(vocab_size=vocab), vocab_size=None)

    assert loss_chunk_size(args(1), config(151936)) == 256
    assert loss_chunk_size(args(1), config(576)) == 0
    assert loss_chunk_size(args(2), config(151936)) == 0
    assert loss_chunk_size(args(1), SimpleNamespace(vocab_size=151936)) == 256  # a config without text_config


def test_loss_forward_builds_no_kv_cache() -> None:
    """The loss forward asks the model for no KV cache (paddleformers' Qwen-VL models otherwise copy every layer's
    keys and values into one, forward and backward) and never passes the labels."""
    from types import SimpleNamespace

    from paddlemix.trainer.chunked_loss import lm_loss_without_full_logits

    seen = {}

    class Model(paddle.nn.Layer):
        def __init__(self):
            super().__init__()
            self.lm_head = paddle.nn.Linear(4, 7)

        def forward(self, **kwargs):
            seen.update(kwargs)
            return SimpleNamespace(logits=self.lm_head(kwargs["input_ids"]))

    model = Model()
    inputs = {"input_ids": paddle.randn([1, 3, 4]), "labels": paddle.to_tensor([[1, 2, -100]])}
    lm_loss_without_full_logits(model, inputs, model, chunk_size=2)
    assert seen["use_cache"] is False and "labels" not in seen
