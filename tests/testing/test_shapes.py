"""Checks that the synthetic shapes dataset is deterministic, correctly labelled and has a clean train/eval split."""

from __future__ import annotations

import hashlib
import itertools
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from paddlemix.testing.shapes import BACKGROUND, COLORS, SHAPES, draw_shape, main, make_shapes_dataset

N_TRAIN, N_EVAL = 400, 80
FILE_NAMES = {"train", "train_llava", "caption", "vqa", "eval"}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_shapes_dataset(tmp_path_factory.mktemp("shapes"), n_train=N_TRAIN, n_eval=N_EVAL, seed=0)


def read_records(path: Path) -> list[dict]:
    if path.suffix == ".json":
        return json.loads(path.read_text(encoding="utf-8"))
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def image_paths(record: dict) -> list[str]:
    return record["images"] if "images" in record else [record["image"]]


def color_answers(path: Path) -> list[tuple[str, str, str]]:
    """Return (image, asked shape, colour answer) for each record of a messages-shaped file."""
    out = []
    for record in read_records(path):
        user, assistant = record["messages"]
        assert user["role"] == "user" and assistant["role"] == "assistant"
        assert user["content"].startswith("<image>What color is the ") and user["content"].endswith("?")
        shape = user["content"].removeprefix("<image>What color is the ").removesuffix("?")
        out.append((record["images"][0], shape, assistant["content"]))
    return out


def foreground(image: Image.Image) -> np.ndarray:
    pixels = np.asarray(image.convert("RGB"))
    return pixels[np.any(pixels != np.array(BACKGROUND, dtype=np.uint8), axis=-1)]


def dominant_color(image: Image.Image) -> tuple[int, int, int]:
    counts = Counter(map(tuple, foreground(image).tolist()))
    return counts.most_common(1)[0][0]


def classify_shape(image: Image.Image) -> str:
    """Tell shapes apart by how much of their bounding box they fill: ~1 square, ~pi/4 circle, ~1/2 triangle."""
    pixels = np.asarray(image.convert("RGB"))
    mask = np.any(pixels != np.array(BACKGROUND, dtype=np.uint8), axis=-1)
    rows, cols = np.nonzero(mask)
    fill = mask.sum() / ((rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1))
    if fill > 0.95:
        return "square"
    if 0.7 < fill < 0.9:
        return "circle"
    if 0.4 < fill < 0.65:
        return "triangle"
    return f"unknown (fill {fill:.2f})"


def test_colors_are_well_separated() -> None:
    assert len(COLORS) == 8 and SHAPES == ("circle", "square", "triangle")
    for a, b in itertools.combinations(COLORS, 2):
        assert np.linalg.norm(np.subtract(COLORS[a], COLORS[b])) > 90, (a, b)
    for name, rgb in COLORS.items():
        assert np.linalg.norm(np.subtract(rgb, BACKGROUND)) > 150, name
        assert name.isalpha() and name.islower()


@pytest.mark.parametrize("shape", SHAPES)
def test_draw_shape_is_deterministic_and_labelled(shape: str) -> None:
    images = [draw_shape("green", shape, size=(64, 48), rng=np.random.default_rng(7)) for _ in range(2)]
    assert images[0].size == (64, 48) and images[0].mode == "RGB"
    assert images[0].tobytes() == images[1].tobytes()
    assert dominant_color(images[0]) == COLORS["green"]
    assert classify_shape(images[0]) == shape
    assert foreground(images[0]).shape[0] > 0.1 * 64 * 48


def test_draw_shape_varies_with_rng() -> None:
    rng = np.random.default_rng(0)
    assert len({draw_shape("red", "circle", rng=rng).tobytes() for _ in range(10)}) > 1


def test_draw_shape_rejects_unknown_names() -> None:
    with pytest.raises(ValueError, match="color"):
        draw_shape("magenta", "circle", rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match="shape"):
        draw_shape("red", "hexagon", rng=np.random.default_rng(0))


def test_files_and_counts(dataset: dict[str, Path]) -> None:
    paths = dataset
    assert set(paths) == FILE_NAMES and all(p.is_file() for p in paths.values())
    root = paths["train"].parent
    assert len(read_records(paths["train"])) == N_TRAIN
    assert len(read_records(paths["eval"])) == N_EVAL
    assert len(read_records(paths["train_llava"])) == (N_TRAIN + 1) // 2
    assert len(read_records(paths["caption"])) == len(range(1, N_TRAIN, 4))
    assert len(read_records(paths["vqa"])) == len(range(3, N_TRAIN, 4))
    assert len(list((root / "images").glob("*.png"))) == N_TRAIN + N_EVAL


def test_image_paths_are_relative_and_exist(dataset: dict[str, Path]) -> None:
    paths = dataset
    for name, path in paths.items():
        for record in read_records(path):
            for image in image_paths(record):
                assert not Path(image).is_absolute() and image.startswith("images/"), (name, image)
                assert (path.parent / image).is_file(), (name, image)


def test_answers_match_pixels(dataset: dict[str, Path]) -> None:
    paths = dataset
    root = paths["train"].parent
    for name in ("train", "eval"):
        for image, shape, color in color_answers(paths[name]):
            assert color in COLORS and shape in SHAPES
            with Image.open(root / image) as im:
                assert dominant_color(im) == COLORS[color], (name, image, color)
                assert classify_shape(im) == shape, (name, image, shape)
                assert foreground(im).shape[0] > 0.1 * im.width * im.height


def test_other_formats_agree_with_train(dataset: dict[str, Path]) -> None:
    paths = dataset
    truth = {image: (shape, color) for image, shape, color in color_answers(paths["train"])}
    two_turn = 0
    for record in read_records(paths["train_llava"]):
        shape, color = truth[record["image"]]
        turns = record["conversations"]
        assert [t["from"] for t in turns] == ["human", "gpt"] * (len(turns) // 2) and len(turns) in (2, 4)
        assert turns[0]["value"] == "<image>\nWhat shape is this?" and turns[1]["value"] == shape
        if len(turns) == 4:
            two_turn += 1
            assert "<image>" not in turns[2]["value"] and turns[3]["value"] == color
    assert 0 < two_turn < len(read_records(paths["train_llava"])) // 2
    for record in read_records(paths["caption"]):
        shape, color = truth[record["image"]]
        assert record["caption"] == f"a {color} {shape}"
    for record in read_records(paths["vqa"]):
        shape, color = truth[record["image"]]
        assert record["question"] == f"What color is the {shape}?" and record["answer"] == color


def test_train_and_eval_images_are_disjoint(dataset: dict[str, Path]) -> None:
    paths = dataset
    root = paths["train"].parent
    train_files = {
        image for name in FILE_NAMES - {"eval"} for r in read_records(paths[name]) for image in image_paths(r)
    }
    eval_files = {image for r in read_records(paths["eval"]) for image in image_paths(r)}
    assert len(eval_files) == N_EVAL and not train_files & eval_files

    def pixel_digest(image: str) -> str:
        with Image.open(root / image) as im:
            return hashlib.sha256(im.tobytes()).hexdigest()

    assert not {pixel_digest(i) for i in train_files} & {pixel_digest(i) for i in eval_files}


def test_labels_are_balanced(dataset: dict[str, Path]) -> None:
    paths = dataset
    for name in ("train", "eval"):
        answers = color_answers(paths[name])
        colors = Counter(color for _, _, color in answers)
        shapes = Counter(shape for _, shape, _ in answers)
        assert set(colors) == set(COLORS) and max(colors.values()) - min(colors.values()) <= 1, (name, colors)
        assert set(shapes) == set(SHAPES) and max(shapes.values()) - min(shapes.values()) <= 1, (name, shapes)


def test_every_color_appears_in_small_eval(tmp_path: Path) -> None:
    paths = make_shapes_dataset(tmp_path, n_train=10, n_eval=len(COLORS), seed=3)
    assert {color for _, _, color in color_answers(paths["eval"])} == set(COLORS)


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_identical_files(tmp_path: Path) -> None:
    first = tree_bytes(Path(make_shapes_dataset(tmp_path / "a", n_train=40, n_eval=16, seed=5)["train"]).parent)
    second = tree_bytes(Path(make_shapes_dataset(tmp_path / "b", n_train=40, n_eval=16, seed=5)["train"]).parent)
    assert len(first) == 40 + 16 + len(FILE_NAMES)
    assert first == second
    other = tree_bytes(Path(make_shapes_dataset(tmp_path / "c", n_train=40, n_eval=16, seed=6)["train"]).parent)
    assert other.keys() == first.keys() and other != first


def test_too_small_image_for_distinct_images_raises(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="too small"):
        make_shapes_dataset(tmp_path, n_train=2000, n_eval=10, image_size=(8, 8))


def test_main_writes_files_and_prints_counts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main(["--out_dir", str(tmp_path), "--n_train", "24", "--n_eval", "8", "--seed", "1"])
    out = capsys.readouterr().out
    assert "train: " in out and "(24 records)" in out and "(8 records)" in out
    assert len(read_records(tmp_path / "train.jsonl")) == 24
