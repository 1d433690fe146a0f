"""Fill ratio of MIXToken's best-fit packing against next-fit in file order and padding to the batch's longest.

fill = real tokens / (rows x row length). Padding rows are as long as the longest sample of each batch.
Also prints the Spearman rank correlation between a pack's position in the training stream (the order
`PackedDataset` hands packs to the trainer, over one epoch's worth of packs) and its mean sample length.
Usage: python benchmarks/packing_fill.py --lengths FILE --max_length 4096 [--window 1000] [--batch 8]
"""

from __future__ import annotations

import argparse

import numpy as np

from paddlemix.datasets.packing import BestFitPacker, PackedDataset, fill_ratio, next_fit, order_length_correlation


class KnownLengths:
    """Stands in for the encoded dataset: lengths only, which is all the pack planner reads."""

    def __init__(self, lengths: list[int]):
        self.lengths = lengths

    def __len__(self) -> int:
        return len(self.lengths)

    def length(self, i: int) -> int:
        return self.lengths[i]


def stream_correlation(lengths: list[int], max_length: int, window: int, packs: int, seed: int = 0) -> float:
    """Position-vs-length rank correlation of the first `packs` packs of the trainer's pack stream."""
    stream = PackedDataset(KnownLengths(lengths), max_length, positions=None, seed=seed, window=window).stream()
    return order_length_correlation([next(stream) for _ in range(packs)], lengths)


def padded_fill(lengths: list[int], batch: int) -> tuple[float, int]:
    rows = [lengths[i : i + batch] for i in range(0, len(lengths), batch)]
    slots = sum(len(r) * max(r) for r in rows)
    return sum(lengths) / slots, len(lengths)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", required=True, help="text file, one sample length per line")
    parser.add_argument("--max_length", type=int, default=4096)
    parser.add_argument("--window", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()
    lengths = np.loadtxt(args.lengths, dtype=int, ndmin=1).tolist()
    too_long = sum(n > args.max_length for n in lengths)
    lengths = [n for n in lengths if n <= args.max_length]
    ours = list(BestFitPacker(args.max_length, args.window).pack(enumerate(lengths)))
    baseline = next_fit(lengths, args.max_length)
    pad, pad_rows = padded_fill(lengths, args.batch)
    print(f"{len(lengths)} samples, mean {np.mean(lengths):.0f} tokens, max_length {args.max_length}"
          + (f" ({too_long} longer samples left out)" if too_long else ""))  # fmt: skip
    print(f"{'method':<34} {'fill':>7} {'rows':>8}")
    print(
        f"{'best-fit, window ' + str(args.window):<34} {fill_ratio(ours, lengths, args.max_length):>7.4f} {len(ours):>8}"
    )
    print(f"{'next-fit in file order':<34} {fill_ratio(baseline, lengths, args.max_length):>7.4f} {len(baseline):>8}")
    print(f"{'padding to longest of ' + str(args.batch):<34} {pad:>7.4f} {pad_rows:>8}")
    emitted = order_length_correlation(ours, lengths)
    trained = stream_correlation(lengths, args.max_length, args.window, len(ours))
    print(
        f"Spearman rho, pack position vs mean sample length: training stream {trained:+.4f} "
        f"(packer emission order {emitted:+.4f})"
    )


if __name__ == "__main__":
    main()
