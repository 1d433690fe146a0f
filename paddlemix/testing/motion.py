"""Synthetic video question answering: which way a square moves, in short clips written with PyAV.

A clip shows a bright square of random colour and row moving left or right at a constant speed from a random
column, wrapping around at the edges: every single frame looks alike for both directions, so the answer needs the
motion across frames.
Records come in two shapes: LLaMA-Factory's `videos` + `<video>` (train) and typed video parts (eval).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from paddlemix.testing.synthetic_video import DIRECTIONS, moving_square, write_clip

QUESTION = "Which way does the square move?"
CLIP_DIR = "clips"


def make_motion_dataset(
    folder: str | Path, n_train: int = 400, n_eval: int = 80, seed: int = 0, frames: int = 8, fps: int = 4,
    size: int = 56, side: int = 20, speed: float = 3.0,
) -> dict[str, Path]:  # fmt: skip
    """Write `n_train` + `n_eval` clips (balanced directions, seeded) under folder/clips and the records in
    train.jsonl and eval.jsonl; returns {"train": path, "eval": path}."""
    folder = Path(folder)
    (folder / CLIP_DIR).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    out = {}
    for split, count in (("train", n_train), ("eval", n_eval)):
        lines = []
        for k in range(count):
            direction = DIRECTIONS[k % 2]
            name = f"{CLIP_DIR}/{split}_{k:04d}.mp4"
            clip_seed = int(rng.integers(0, 2**31))
            clip = moving_square(direction, frames, size, side, seed=clip_seed, speed=speed)
            write_clip(folder / name, clip, fps=fps)
            lines.append(json.dumps(record(name, direction, typed=split == "eval")))
        order = rng.permutation(len(lines))
        out[split] = folder / f"{split}.jsonl"
        out[split].write_text("".join(lines[i] + "\n" for i in order), encoding="utf-8")
    return out


def record(clip: str, direction: str, typed: bool) -> dict:
    """One question about `clip` with its answer, in the `videos` + `<video>` shape or with a typed video part."""
    if typed:
        content = [{"type": "video", "video": clip}, {"type": "text", "text": QUESTION}]
        return {"messages": [{"role": "user", "content": content}, {"role": "assistant", "content": direction}]}
    return {"videos": [clip], "messages": [{"role": "user", "content": "<video>" + QUESTION},
                                           {"role": "assistant", "content": direction}]}  # fmt: skip
