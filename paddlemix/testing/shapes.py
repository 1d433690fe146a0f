"""Synthetic visual-question-answering data of coloured shapes with known answers.

Demos and tests train on it to show that a model really learns to read images, without downloading anything.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 20, 30),
    "green": (30, 190, 50),
    "blue": (40, 80, 235),
    "yellow": (245, 230, 20),
    "purple": (150, 50, 200),
    "orange": (255, 128, 0),
    "white": (245, 245, 245),
    "cyan": (20, 215, 220),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
BACKGROUND: tuple[int, int, int] = (32, 32, 32)

IMAGE_DIR = "images"
COLOR_QUESTION = "What color is the {shape}?"
SHAPE_QUESTION = "What shape is this?"
FOLLOW_UP_COLOR_QUESTION = "What color is it?"

_FILES = {
    "train": "train.jsonl",
    "train_llava": "train_llava.json",
    "caption": "caption.jsonl",
    "vqa": "vqa.jsonl",
    "eval": "eval.jsonl",
}

_MIN_FRACTION = 0.5
_MAX_FRACTION = 0.85
_MARGIN = 2
_MAX_ATTEMPTS = 1000

Layout = tuple[int, int, int]


def _check_size(size: tuple[int, int]) -> tuple[int, int]:
    width, height = int(size[0]), int(size[1])
    if min(width, height) < 8:
        raise ValueError(f"image size must be at least 8x8, got {size}")
    return width, height


def _sample_layout(size: tuple[int, int], rng: np.random.Generator) -> Layout:
    """Pick the side and top-left corner of the shape's square bounding box, kept inside the image."""
    width, height = size
    short = min(width, height)
    largest = min(int(short * _MAX_FRACTION), short - 2 * _MARGIN)
    side = int(rng.integers(min(int(short * _MIN_FRACTION), largest), largest + 1))
    left = int(rng.integers(_MARGIN, width - side - _MARGIN + 1))
    top = int(rng.integers(_MARGIN, height - side - _MARGIN + 1))
    return side, left, top


def _render(color: str, shape: str, size: tuple[int, int], layout: Layout) -> Image.Image:
    """Draw one filled, non-antialiased shape so every foreground pixel has exactly the colour's RGB."""
    side, left, top = layout
    right, bottom = left + side - 1, top + side - 1
    image = Image.new("RGB", size, BACKGROUND)
    draw = ImageDraw.Draw(image)
    fill = COLORS[color]
    if shape == "circle":
        draw.ellipse((left, top, right, bottom), fill=fill)
    elif shape == "square":
        draw.rectangle((left, top, right, bottom), fill=fill)
    else:
        draw.polygon([((left + right) / 2, top), (left, bottom), (right, bottom)], fill=fill)
    return image


def _check_names(color: str, shape: str) -> None:
    if color not in COLORS:
        raise ValueError(f"unknown color {color!r}; expected one of {sorted(COLORS)}")
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; expected one of {list(SHAPES)}")


def draw_shape(
    color: str, shape: str, size: tuple[int, int] = (56, 56), rng: np.random.Generator | None = None
) -> Image.Image:
    """Draw one filled shape of a named colour at a random position and scale on a plain dark background.

    ``size`` is (width, height); the result is deterministic for a seeded ``rng`` (a fresh unseeded one if None).
    """
    _check_names(color, shape)
    size = _check_size(size)
    rng = np.random.default_rng() if rng is None else rng
    return _render(color, shape, size, _sample_layout(size, rng))


def _balanced_labels(n: int, rng: np.random.Generator) -> list[tuple[str, str]]:
    """Return n (colour, shape) pairs whose colour counts and shape counts each differ by at most one, shuffled."""
    colors = list(COLORS)
    labels = [(colors[i % len(colors)], SHAPES[i % len(SHAPES)]) for i in range(n)]
    return [labels[i] for i in rng.permutation(n)]


def _write_jsonl(path: Path, records: Iterable[dict]) -> None:
    with path.open("w", encoding="utf-8", newline="\n") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")


def _messages_record(image: str, color: str, shape: str) -> dict:
    return {
        "images": [image],
        "messages": [
            {"role": "user", "content": "<image>" + COLOR_QUESTION.format(shape=shape)},
            {"role": "assistant", "content": color},
        ],
    }


def _llava_record(index: int, image: str, color: str, shape: str) -> dict:
    conversations = [
        {"from": "human", "value": "<image>\n" + SHAPE_QUESTION},
        {"from": "gpt", "value": shape},
    ]
    if index % 5 == 0:
        conversations += [
            {"from": "human", "value": FOLLOW_UP_COLOR_QUESTION},
            {"from": "gpt", "value": color},
        ]
    return {"id": f"shapes_train_{index:05d}", "image": image, "conversations": conversations}


def make_shapes_dataset(
    out_dir: str | Path,
    *,
    n_train: int = 400,
    n_eval: int = 80,
    seed: int = 0,
    image_size: tuple[int, int] = (56, 56),
) -> dict[str, Path]:
    """Write shape images and train/eval files in several chat formats, returning each file's path by name.

    Eval images never repeat a train image, so eval accuracy measures generalisation; output is byte-identical per seed.
    """
    if n_train < 1 or n_eval < 1:
        raise ValueError(f"n_train and n_eval must be positive, got {n_train} and {n_eval}")
    size = _check_size(image_size)
    out_dir = Path(out_dir)
    (out_dir / IMAGE_DIR).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)

    seen: set[tuple[str, str, Layout]] = set()
    splits: dict[str, list[tuple[str, str, str]]] = {}
    for split, n in (("train", n_train), ("eval", n_eval)):
        items = []
        for index, (color, shape) in enumerate(_balanced_labels(n, rng)):
            for _ in range(_MAX_ATTEMPTS):
                layout = _sample_layout(size, rng)
                if (color, shape, layout) not in seen:
                    break
            else:
                raise ValueError(f"image_size {size} is too small for {n_train + n_eval} distinct images")
            seen.add((color, shape, layout))
            image = f"{IMAGE_DIR}/{split}_{index:05d}.png"
            _render(color, shape, size, layout).save(out_dir / image, format="PNG")
            items.append((image, color, shape))
        splits[split] = items

    train = splits["train"]
    paths = {name: out_dir / filename for name, filename in _FILES.items()}
    _write_jsonl(paths["train"], (_messages_record(*item) for item in train))
    _write_jsonl(paths["eval"], (_messages_record(*item) for item in splits["eval"]))
    llava = [_llava_record(i, *item) for i, item in enumerate(train) if i % 2 == 0]
    paths["train_llava"].write_text(json.dumps(llava, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    _write_jsonl(
        paths["caption"],
        (
            {"image": image, "caption": f"a {color} {shape}"}
            for i, (image, color, shape) in enumerate(train)
            if i % 4 == 1
        ),
    )
    _write_jsonl(
        paths["vqa"],
        (
            {"image": image, "question": COLOR_QUESTION.format(shape=shape), "answer": color}
            for i, (image, color, shape) in enumerate(train)
            if i % 4 == 3
        ),
    )
    return paths


def _count_records(path: Path) -> int:
    if path.suffix == ".json":
        return len(json.loads(path.read_text(encoding="utf-8")))
    return sum(1 for line in path.read_text(encoding="utf-8").splitlines() if line.strip())


def main(argv: Sequence[str] | None = None) -> None:
    """Command-line entry point: write the shapes dataset to --out_dir and list the files with record counts."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out_dir", required=True, help="folder to write images/ and the data files into")
    parser.add_argument("--n_train", type=int, default=400, help="number of training images")
    parser.add_argument("--n_eval", type=int, default=80, help="number of held-out evaluation images")
    parser.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives identical files")
    args = parser.parse_args(argv)
    paths = make_shapes_dataset(args.out_dir, n_train=args.n_train, n_eval=args.n_eval, seed=args.seed)
    print(f"images: {args.n_train + args.n_eval} in {Path(args.out_dir) / IMAGE_DIR}")
    for name, path in paths.items():
        print(f"{name}: {path} ({_count_records(path)} records)")


if __name__ == "__main__":
    main()
