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
    assert mix.describe() == (
        "3 samples per epoch from letters: 3 (100%; rate 1: all 3 records), "
        "other: 0 (0%; rate 0: left out (sampling_rate 0))"
    )


def test_fraction_draws_a_fresh_subset_each_epoch() -> None:
    """A 16-record source at 0.5: epochs 0 and 1 train disjoint halves (together all 16), epoch 2 a new half; the
    same seed gives the same draws, another seed others."""
    mix = MixDataset([list(range(16))], [0.5], seed=7)
    epochs = [sorted(mix[e * len(mix) + i] for i in range(len(mix))) for e in range(3)]
    assert [len(set(e)) for e in epochs] == [8, 8, 8]
    assert set(epochs[0]).isdisjoint(epochs[1]) and set(epochs[0]) | set(epochs[1]) == set(range(16))
    assert epochs[2] not in (epochs[0], epochs[1])
    again = MixDataset([list(range(16))], [0.5], seed=7)
    assert [sorted(again[e * 8 + i] for i in range(8)) for e in range(3)] == epochs
    other = MixDataset([list(range(16))], [0.5], seed=8)
    assert sorted(other[i] for i in range(8)) != epochs[0]
    assert "8 of its 16 records, a fresh draw each epoch" in mix.describe()


def test_rate_above_one_repeats_whole_passes_plus_a_fresh_fraction() -> None:
    counts = [Counter(record for _, record in mix_indices([10], [1.5], seed=0, epoch=e)) for e in range(2)]
    for c in counts:
        assert set(c) == set(range(10)) and sorted(c.values()).count(2) == 5
    doubled = [{r for r, n in c.items() if n == 2} for c in counts]
    assert doubled[0].isdisjoint(doubled[1])  # the extra half differs between epochs
    assert (
        "all 10 records + 5 of its 10 records, a fresh draw each epoch" in MixDataset([range(10)], [1.5], 0).describe()
    )
