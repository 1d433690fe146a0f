"""The eval sampler of several data-parallel ranks (`even_eval_sampler`): every eval sample is evaluated, each rank
runs the same number of eval steps. paddleformers' own distributed sampler dropped the samples past the last
multiple of the rank count, so 7 eval records on 2 processes gave another eval loss than on one."""

from __future__ import annotations

import math

import pytest
from paddleformers.utils.batch_sampler import MappingDistributedBatchSampler

from paddlemix.trainer.trainer import even_eval_sampler


def batches(sampler_of, n: int, batch: int, ranks: int) -> list[list[list[int]]]:
    return [list(sampler_of(list(range(n)), batch, ranks, rank)) for rank in range(ranks)]


@pytest.mark.parametrize("ranks", [2, 3, 4])
@pytest.mark.parametrize("batch", [1, 2, 3])
@pytest.mark.parametrize("n", [1, 2, 5, 7, 8, 9])
def test_every_sample_once_or_more_and_equal_steps(n: int, batch: int, ranks: int) -> None:
    per_rank = batches(even_eval_sampler, n, batch, ranks)
    assert len({len(b) for b in per_rank}) == 1, "every rank must run the same number of eval steps"
    assert len(per_rank[0]) == math.ceil(math.ceil(n / ranks) / batch)
    seen = [i for b in per_rank for step in b for i in step]
    assert set(seen) == set(range(n))
    assert len(seen) == math.ceil(n / ranks) * ranks, "padded to a multiple of the ranks with repeats, never cut"


def test_paddleformers_sampler_drops_the_remainder() -> None:
    """The fault: 7 records on 2 ranks, batch 2 — record 6 is never evaluated."""

    def paddleformers(dataset, batch, ranks, rank):
        return MappingDistributedBatchSampler(dataset, batch, num_replicas=ranks, rank=rank)

    dropped = {i for b in batches(paddleformers, 7, 2, 2) for step in b for i in step}
    kept = {i for b in batches(even_eval_sampler, 7, 2, 2) for step in b for i in step}
    assert dropped == set(range(6)) and kept == set(range(7))
