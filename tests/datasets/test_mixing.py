from __future__ import annotations

from collections import Counter

import pytest

from paddlemix.datasets.mixing import MixDataset, mix_indices


def test_same_seed_same_order_and_other_seed_differs() -> None:
    assert mix_indices([50, 30], [1.0, 0.5], seed=1) == mix_indices([50, 30], [1.0, 0.5], seed=1)
    assert mix_indices([50, 30], [1.0, 0.5], seed=1) != mix_indices([50, 30], [1.0, 0.5], seed=2)


@pytest.mark.parametrize("rates", [(1.0, 0.5), (2.0, 0.25), (0.0, 1.0), (1.5, 3.0)])
def test_realised_counts_follow_rates(rates: tuple[float, float]) -> None:
    lengths = (40, 100)
    counts = Counter(source for source, _ in mix_indices(lengths, rates, seed=0))
    for source, (n, rate) in enumerate(zip(lengths, rates)):
        assert counts[source] == round(n * rate)


def test_fraction_draws_distinct_records_and_whole_rates_cover_all() -> None:
    pairs = mix_indices([10], [2.5], seed=3)
    per_record = Counter(record for _, record in pairs)
    assert set(per_record) == set(range(10))
    assert sorted(per_record.values()).count(3) == 5


def test_sources_are_interleaved() -> None:
    order = [source for source, _ in mix_indices([100, 100], [1.0, 1.0], seed=0)]
    assert order[:100].count(0) not in (0, 100)


def test_mix_dataset_reads_through_and_counts() -> None:
    mix = MixDataset([list("abc"), list("xyz")], [1.0, 0.0], seed=0, names=["letters", "other"])
    assert sorted(mix[i] for i in range(len(mix))) == ["a", "b", "c"]
    assert mix.counts == {"letters": 3, "other": 0}
    assert "letters: 3 (100%)" in mix.describe()
