"""Write sample lengths (tokens after image expansion) that look like a LLaVA-style SFT mixture, one per line.

Mostly 100-2000 tokens, mean about 600, with a long tail: short captions, single-image VQA with one image of a few
hundred visual tokens, multi-turn chats, and a few long multi-image documents.
Usage: python benchmarks/llava_like_lengths.py --n 20000 --out lengths.txt [--max_length 4096] [--seed 0]
"""

from __future__ import annotations

import argparse

import numpy as np


def llava_like_lengths(n: int, max_length: int = 4096, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    kind = rng.choice(4, size=n, p=[0.25, 0.45, 0.25, 0.05])
    image_tokens = rng.choice([64, 144, 256, 324, 400], size=n)
    caption = image_tokens + rng.integers(20, 80, n)
    vqa = image_tokens + rng.lognormal(5.3, 0.6, n)
    chat = image_tokens + rng.lognormal(6.3, 0.5, n)
    long_doc = rng.lognormal(7.5, 0.35, n)
    lengths = np.choose(kind, [caption, vqa, chat, long_doc]).astype(int)
    return np.clip(lengths, 16, max_length)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=20000)
    parser.add_argument("--out", required=True)
    parser.add_argument("--max_length", type=int, default=4096)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    lengths = llava_like_lengths(args.n, args.max_length, args.seed)
    np.savetxt(args.out, lengths, fmt="%d")
    print(f"{args.n} lengths -> {args.out}: mean {lengths.mean():.0f}, median {np.median(lengths):.0f}, "
          f"p95 {np.percentile(lengths, 95):.0f}, max {lengths.max()}")  # fmt: skip


if __name__ == "__main__":
    main()
