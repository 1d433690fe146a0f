"""Language-model loss without the full [tokens, vocab] logits: the head and cross-entropy run chunk by chunk.

Each chunk's logits exist only while that chunk is computed; backward recomputes them (activation recompute), so
peak memory holds one chunk of logits instead of all of them (in the spirit of fused linear cross-entropy). The
result is the same token-mean loss, with the same gradients, as `cross_entropy(head(hidden), labels)`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import paddle
import paddle.nn.functional as F
from paddle.distributed.fleet.utils import recompute

from paddlemix.processors.sample_processor import IGNORE_INDEX

# Below this vocabulary the chunked loss only costs time. Measured with one thread on a 2-core CPU (512 labelled
# tokens, hidden 128, head + cross-entropy forward and backward): the chunked loss took 2.06x the time of full
# logits at a 576-word vocabulary, 1.33x at 2,048, 1.58x at 8,192, 1.61x at 32,768 and 2.22x at 151,936; it is
# never faster (backward recomputes each chunk's logits) and exists for memory, which it saves only where the
# logits are large: below 16,384 words the full float32 logits of a 4,096-token step stay under 256 MB.
CHUNKED_LOSS_MIN_VOCAB = 16384


def uses_chunked_loss(vocab_size: int, chunk_size: int) -> bool:
    """Whether training takes the chunked loss: `loss_chunk_size` > 0 and a vocabulary of at least
    CHUNKED_LOSS_MIN_VOCAB words; otherwise full logits."""
    return chunk_size > 0 and vocab_size >= CHUNKED_LOSS_MIN_VOCAB


def vocab_size(config: Any) -> int:
    """The language model's vocabulary of a model config (the text config's where the model has one)."""
    return int(getattr(getattr(config, "text_config", None), "vocab_size", None) or config.vocab_size)


def _chunk_loss_sum(head: Callable[[Any], Any], hidden: Any, labels: Any) -> Any:
    logits = head(hidden).astype("float32")  # [chunk, vocab]
    return F.cross_entropy(logits, labels, reduction="sum")


def chunked_lm_loss(
    head: Callable[[Any], Any], hidden: Any, labels: Any, chunk_size: int = 1024, reduction: str = "mean"
) -> Any:
    """Cross-entropy of `head(hidden)` against `labels` over the positions whose label is not ignored: their mean,
    or with `reduction="sum"` their sum (float32 scalar; the trainer divides by the whole step's label count).

    hidden: [..., H] states whose label is the token at the same position (labels already shifted);
    labels: [...] int64 with IGNORE_INDEX where no loss is taken; chunk_size <= 0: all labelled positions in one
    pass without recompute (the head still runs on the labelled positions only).
    """
    hidden = hidden.reshape([-1, hidden.shape[-1]])  # [tokens, hidden]
    labels = labels.reshape([-1])
    keep = paddle.nonzero(labels != IGNORE_INDEX).squeeze(-1)
    if keep.shape[0] == 0:
        return (hidden.sum() * 0.0).astype("float32")
    hidden, labels = paddle.gather(hidden, keep), paddle.gather(labels, keep)  # only labelled positions
    if chunk_size <= 0:
        total = _chunk_loss_sum(head, hidden, labels)
        return total if reduction == "sum" else total / float(keep.shape[0])
    total = paddle.zeros([], dtype="float32")
    for start in range(0, hidden.shape[0], chunk_size):
        h, y = hidden[start : start + chunk_size], labels[start : start + chunk_size]
        total = total + recompute(_chunk_loss_sum, head, h, y, use_reentrant=False)
    return total if reduction == "sum" else total / float(keep.shape[0])


def token_loss_sum(logits: Any, labels: Any) -> Any:
    """Sum of the cross-entropy over labelled positions of full logits [..., vocab] (labels already shifted,
    IGNORE_INDEX elsewhere); float32 scalar, 0 when nothing is labelled."""
    logits = logits.reshape([-1, logits.shape[-1]]).astype("float32")  # [tokens, vocab]
    labels = labels.reshape([-1])
    mask = (labels != IGNORE_INDEX).astype("float32")
    ce = F.cross_entropy(logits, labels.clip(min=0), reduction="none").reshape([-1])
    return (ce * mask).sum()


def training_forward(inputs: dict[str, Any]) -> dict[str, Any]:
    """The model's keyword arguments of a loss forward: the batch without labels, and no KV cache (paddleformers'
    Qwen-VL models build one whenever the config's `use_cache` is on, which in training copies every layer's keys
    and values once more, forward and backward)."""
    return {**{k: v for k, v in inputs.items() if k != "labels"}, "use_cache": False}


class _Identity(paddle.nn.Layer):
    def forward(self, x: Any) -> Any:
        return x


def lm_loss_without_full_logits(
    model: Any, inputs: dict[str, Any], head_owner: Any, chunk_size: int, reduction: str = "mean"
) -> Any:
    """Run `model` (possibly wrapped by LoRA or DataParallel) with its LM head swapped for identity, so its
    forward returns hidden states, then take the chunked loss with the real head. Going through the wrapper's own
    forward keeps data-parallel gradient sync intact."""
    head = head_owner.lm_head
    head_owner.lm_head = _Identity()
    try:
        hidden = model(**training_forward(inputs)).logits  # [B, L, H]
    finally:
        head_owner.lm_head = head
    return chunked_lm_loss(head, hidden, inputs["labels"], chunk_size, reduction)
