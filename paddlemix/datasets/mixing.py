"""Mix several sources into one index by `sampling_rate`, deterministically for a given seed."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

logger = logging.getLogger(__name__)


def mix_indices(lengths: Sequence[int], rates: Sequence[float], seed: int) -> list[tuple[int, int]]:
    """Return (source, record) pairs: `rate` of each source's records (rate 2.0 = each twice), shuffled together.

    The fractional part of a rate draws a random subset without replacement, so 0.5 of 10 records is exactly 5;
    rate 0 leaves the source out.
    """
    rng = np.random.default_rng(seed)
    pairs: list[tuple[int, int]] = []
    for source, (n, rate) in enumerate(zip(lengths, rates)):
        whole, frac = divmod(rate, 1.0)
        picked = [np.arange(n)] * int(whole) + [rng.permutation(n)[: int(round(frac * n))]]
        pairs.extend((source, int(i)) for i in np.concatenate(picked))
    order = rng.permutation(len(pairs))
    return [pairs[i] for i in order]


class MixDataset:
    """Samples drawn from several datasets by `mix_indices`; `counts` reports how many each contributed."""

    def __init__(self, datasets: Sequence, rates: Sequence[float], seed: int, names: Sequence[str] = ()):
        self.datasets = list(datasets)
        self.index = mix_indices([len(d) for d in datasets], rates, seed)
        self.names = list(names) or [f"source{i}" for i in range(len(datasets))]
        self.counts = {name: 0 for name in self.names}
        for source, _ in self.index:
            self.counts[self.names[source]] += 1

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int):
        source, record = self.index[i]
        return self.datasets[source][record]

    def describe(self) -> str:
        total = max(len(self), 1)
        parts = [f"{name}: {n} ({n / total:.0%})" for name, n in self.counts.items()]
        return f"{len(self)} samples from " + ", ".join(parts)
