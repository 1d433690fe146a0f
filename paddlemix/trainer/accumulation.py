"""Loss normalisation over a whole optimizer step, so accumulation and data parallelism equal one big batch.

The loss of a step is the mean over the labelled tokens of all its micro-batches on all data-parallel ranks:

    loss = sum over ranks r, micro-batches m of CE_sum(r, m)  /  N,     N = labelled tokens of the step

N is only known after the step's last micro-batch, so each micro-batch backpropagates CE_sum / n0, where n0 is the
mean labelled count per rank of the step's first micro-batch (the same number on every rank, and close to the
usual token mean in size, which keeps fp16 loss scaling in range). paddleformers then averages the gradients over
the R ranks and scales them by 1 / M (M = gradient_accumulation_steps), so before the optimizer applies them they
are multiplied by M * R * n0 / N. With M = 1 and one rank the factor is exactly 1.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import paddle


def sum_over_ranks(values: Sequence[float], world_size: int, dataset_world_size: int) -> list[float]:
    """Sum `values` over the data-parallel ranks (float64). Ranks that share a batch (tensor or pipeline
    parallel) hold the same values, so the all-rank sum is divided by their number."""
    if world_size <= 1:
        return [float(v) for v in values]
    import paddle.distributed as dist

    t = paddle.to_tensor(list(values), dtype="float64")
    dist.all_reduce(t)
    return [float(v) * dataset_world_size / world_size for v in t.numpy()]


class StepLoss:
    """Bookkeeping of one optimizer step's micro-batches (labelled tokens, loss sums, samples, rows)."""

    def __init__(self, world_size: int = 1, dataset_world_size: int = 1):
        self.world_size = world_size
        self.ranks = max(dataset_world_size, 1)
        self.reset()

    def reset(self) -> None:
        self.micro_batches = 0
        self.norm = 1.0  # n0
        self.tokens = 0.0  # labelled tokens of this rank so far
        self.loss_sum = 0.0  # sum of token losses of this rank so far
        self.samples = 0
        self.rows = 0
        self.total: list[float] | None = None  # [loss sum, tokens, samples, rows] over all ranks, once finished

    def begin_micro_batch(self, label_tokens: int, samples: int, rows: int) -> float:
        """Note a micro-batch before its forward; returns the divisor of its loss sum (n0)."""
        if self.micro_batches == 0:
            first = sum_over_ranks([label_tokens], self.world_size, self.ranks)[0]
            self.norm = max(first / self.ranks, 1.0)
        self.micro_batches += 1
        self.tokens += label_tokens
        self.samples += samples
        self.rows += rows
        return self.norm

    def add_loss_sum(self, value: float) -> None:
        self.loss_sum += value

    def finish(self) -> float:
        """After the step's last micro-batch (all ranks together): the step's token-mean loss."""
        values = [self.loss_sum, self.tokens, self.samples, self.rows]
        self.total = sum_over_ranks(values, self.world_size, self.ranks)
        return self.total[0] / max(self.total[1], 1.0)

    def gradient_factor(self, accumulation_steps: int) -> float:
        """What the accumulated, rank-averaged, 1/M-scaled gradients are multiplied by before the update."""
        if self.total is None:
            self.finish()
        return accumulation_steps * self.ranks * self.norm / max(self.total[1], 1.0)


def scale_gradients(parameters: Any, factor: float, accumulation_steps: int = 1) -> None:
    """Multiply every accumulated gradient by `factor` (`main_grad` under master-grad AMP, else `grad`).

    Sharding stage 3 moves a split weight's gradient (its rank's slice) into `bw_storage` in the backward pass and
    releases `grad`, so paddleformers' division of the accumulated gradients by `accumulation_steps` (M) never
    reaches it: those slices are multiplied by factor / M here, and so end scaled like every other gradient.
    """
    with paddle.no_grad():
        for p in parameters:
            grad, scale = getattr(p, "bw_storage", None), factor / max(accumulation_steps, 1)
            if grad is None:
                grad, scale = getattr(p, "main_grad", None), factor
                grad = grad if grad is not None else p.grad
            if grad is not None and scale != 1.0:
                grad.scale_(scale)
