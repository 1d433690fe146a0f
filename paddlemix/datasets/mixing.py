"""Mix several sources into one index per epoch by `sampling_rate`, deterministically for a given seed.

A rate's whole part repeats every record that many times each epoch; its fractional part draws a fresh subset
each epoch from (seed, epoch): a source at 0.5 trains one half of its records in epoch 0 and the other half in
epoch 1, then a new random split for epochs 2 and 3, and so on. Every epoch has the same number of samples, so
the trainer's epochs, steps and resume arithmetic stay fixed.

An item number `i` past one epoch's length names epoch `i // len(mix)`: the training sampler adds
`epoch * len(mix)` to its indices (`EpochSampler`), so data-loader workers, which keep their own copy of the
dataset across epochs, still read each epoch's own draw.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

logger = logging.getLogger(__name__)


def fraction_draw(n: int, take: int, seed: int, source: int, epoch: int) -> np.ndarray:
    """`take` distinct records of `n` for `epoch`: epochs are grouped in cycles of `n // take` epochs that split one
    permutation of the records (seeded by seed, source and cycle) into disjoint slices, so records come back only
    after a whole cycle has passed (at most `take - 1` records sit a cycle out)."""
    if take <= 0 or n <= 0:
        return np.zeros(0, dtype="int64")
    per_cycle = max(n // take, 1)
    cycle, slot = divmod(epoch, per_cycle)
    order = np.random.default_rng([seed, source, cycle]).permutation(n)
    return order[slot * take : (slot + 1) * take]


def mix_indices(lengths: Sequence[int], rates: Sequence[float], seed: int, epoch: int = 0) -> list[tuple[int, int]]:
    """(source, record) pairs of one epoch: `rate` of each source's records (rate 2.0 = each twice), shuffled
    together. The fractional part draws `round(fraction * n)` distinct records, a fresh subset each epoch (see
    `fraction_draw`), so 0.5 of 10 records is exactly 5 per epoch; rate 0 leaves the source out."""
    pairs: list[tuple[int, int]] = []
    for source, (n, rate) in enumerate(zip(lengths, rates)):
        whole, frac = divmod(rate, 1.0)
        picked = [np.arange(n)] * int(whole) + [fraction_draw(n, int(round(frac * n)), seed, source, epoch)]
        pairs.extend((source, int(i)) for i in np.concatenate(picked))
    order = np.random.default_rng([seed, epoch]).permutation(len(pairs))
    return [pairs[i] for i in order]


class MixDataset:
    """Samples drawn from several datasets by `mix_indices`, one draw per epoch; `counts` reports how many each
    source contributes to every epoch. Item `i` belongs to epoch `i // len(self)` (see the module docstring)."""

    def __init__(self, datasets: Sequence, rates: Sequence[float], seed: int, names: Sequence[str] = ()):
        self.datasets = list(datasets)
        self.rates = [float(r) for r in rates]
        self.seed = seed
        self.lengths = [len(d) for d in datasets]
        self._epochs: dict[int, list[tuple[int, int]]] = {}
        self.index = self.epoch_index(0)
        self.names = list(names) or [f"source{i}" for i in range(len(datasets))]
        self.counts = {name: 0 for name in self.names}
        for source, _ in self.index:
            self.counts[self.names[source]] += 1

    def epoch_index(self, epoch: int) -> list[tuple[int, int]]:
        """The (source, record) pairs of `epoch`, computed once (the last few epochs are kept)."""
        if epoch not in self._epochs:
            if len(self._epochs) >= 4:
                self._epochs.pop(min(self._epochs))
            self._epochs[epoch] = mix_indices(self.lengths, self.rates, self.seed, epoch)
        return self._epochs[epoch]

    def pair(self, i: int) -> tuple[int, int]:
        """(source, record) of item `i`; items past one epoch's length belong to later epochs."""
        epoch, position = divmod(int(i), max(len(self), 1))
        return self.epoch_index(epoch)[position]

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int):
        source, record = self.pair(i)
        return self.datasets[source][record]

    def describe(self) -> str:
        """What each epoch gets, per source: e.g. `8 of its 16 records, a fresh draw each epoch`."""
        total = max(len(self), 1)
        parts = []
        for name, n, rate in zip(self.names, self.lengths, self.rates):
            whole, frac = divmod(rate, 1.0)
            take = int(round(frac * n))
            what = [f"all {n} records x{int(whole)}" if whole > 1 else f"all {n} records"] if whole else []
            if take:
                what.append(f"{take} of its {n} records, a fresh draw each epoch")
            plan = " + ".join(what) or "left out (sampling_rate 0)"
            count = self.counts[name]
            parts.append(f"{name}: {count} ({count / total:.0%}; rate {rate:g}: {plan})")
        return f"{len(self)} samples per epoch from " + ", ".join(parts)
