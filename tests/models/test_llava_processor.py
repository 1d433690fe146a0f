"""LLaVA's processor: CLIP pixels equal transformers 4.57's slow CLIPImageProcessor, one grid of patches per image."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from paddlemix.models.llava.processor import CLIP_MEAN, CLIP_STD, LlavaImageProcessor, LlavaProcessorMIX

# width x height: landscape, portrait, smaller than the crop (upscaled), odd sizes, a square
SIZES = [(84, 56), (40, 100), (30, 20), (57, 113), (56, 56)]


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    paths = []
    for k, (w, h) in enumerate(SIZES):
        paths.append(folder / f"{k}.png")
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(paths[-1])
    Image.fromarray(rng.integers(0, 256, (48, 64, 4), dtype=np.uint8), "RGBA").save(folder / "rgba.png")
    return [*paths, folder / "rgba.png"]


@pytest.fixture(scope="module")
def processor(tiny_llava_dir: Path) -> LlavaProcessorMIX:
    return LlavaProcessorMIX.from_pretrained(tiny_llava_dir)


def pixels_of(image_processor: LlavaImageProcessor, paths: list[Path]) -> np.ndarray:
    return np.concatenate([image_processor(images=[Image.open(p)])["pixel_values"] for p in paths])


def test_pixels_match_hf_clip_image_processor(processor, tiny_llava_dir: Path, images, hf_llava_files, tmp_path):
    hf_llava_files("pixels", tiny_llava_dir, tmp_path / "hf.npz", *images)
    expected = np.load(tmp_path / "hf.npz")["pixel_values"]
    ours = pixels_of(processor.image_processor, images)
    assert ours.dtype == np.float32 and ours.shape == expected.shape == (len(images), 3, 56, 56)
    np.testing.assert_allclose(ours, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "settings",
    [
        {"size": 40, "crop_size": 56},  # crop larger than the resized image: zero padding, numbers instead of dicts
        {"size": {"height": 42, "width": 70}, "do_center_crop": False},
        {"size": {"shortest_edge": 70}, "crop_size": {"height": 42, "width": 56}, "resample": 2},
    ],
    ids=["pad", "no-crop", "bilinear"],
)
def test_other_clip_settings_match_hf(settings: dict, images, hf_llava_files, tmp_path: Path) -> None:
    config = {"image_processor_type": "CLIPImageProcessor", "image_mean": CLIP_MEAN, "image_std": CLIP_STD, **settings}
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(config))
    hf_llava_files("pixels", tmp_path, tmp_path / "hf.npz", *images)
    expected = np.load(tmp_path / "hf.npz")["pixel_values"]
    np.testing.assert_allclose(pixels_of(LlavaImageProcessor.from_config(config, 14), images), expected, atol=1e-5)


def test_every_patch_is_one_visual_token(processor) -> None:
    image_processor = processor.image_processor
    out = image_processor(images=[Image.new("RGB", (90, 30)), Image.new("RGB", (30, 90))], return_tensors="np")
    assert out["pixel_values"].shape == (2, 3, 56, 56)
    assert out["image_grid_thw"].dtype == np.int64
    np.testing.assert_array_equal(out["image_grid_thw"], [[1, 4, 4], [1, 4, 4]])
    assert image_processor.merge_size == 1 and image_processor.image_grid(90, 30) == (1, 4, 4)


def test_processor_reads_the_folder(processor, tiny_llava_dir: Path) -> None:
    config = json.loads((tiny_llava_dir / "config.json").read_text())
    template = json.loads((tiny_llava_dir / "chat_template.json").read_text())["chat_template"]
    assert processor.chat_template == template
    assert processor.tokenizer.convert_tokens_to_ids("<image>") == config["image_token_index"]
    assert processor.vision_feature_select_strategy == "default" and processor.num_additional_image_tokens == 1
