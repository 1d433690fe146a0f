"""Images of every Pillow mode, an EXIF-rotated photo and an animation give the pixel values transformers 4.57.1
gives (`load_image` + Qwen2-VL image processor), except high-bit-depth modes, which transformers clips at 255
(a 16-bit photo turns almost white): those must equal transformers' pixels of the same picture stored in 8 bits."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
from hf_parity import HERE, REF_PYTHON, requires_reference
from PIL import Image

from paddlemix.auto import AutoProcessorMIX
from paddlemix.models import adapter_for
from paddlemix.testing.wild_images import animated_gif, exif_photo, mode_image

# mode -> a format that stores it unchanged
EIGHT_BIT = {"1": "png", "L": "png", "LA": "png", "P": "png", "RGB": "png", "RGBA": "png", "CMYK": "tiff"}
HIGH_BIT = {"I;16": "png", "I;16B": "tiff", "I": "tiff", "F": "tiff"}


def eight_bit_values(image: Image.Image) -> np.ndarray:
    """The documented 8-bit reading of a high-bit-depth image, computed with numpy: 16-bit data / 257 and
    floats in [0, 1] x 255, rounded."""
    a = np.asarray(image).astype("float64")
    scale = 255.0 if image.mode == "F" else 1 / 257
    return np.clip(np.floor(a * scale + 0.5), 0, 255).astype("uint8")


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    """name -> (file we read, file transformers reads)."""
    folder = tmp_path_factory.mktemp("modes")
    out = {}
    for mode, fmt in {**EIGHT_BIT, **HIGH_BIT}.items():
        path = folder / f"{mode.replace(';', '_')}.{fmt}"
        mode_image(mode).save(path)
        with Image.open(path) as saved:
            assert saved.mode == mode, (mode, saved.mode)
            reference = path
            if mode in HIGH_BIT:
                reference = folder / f"{path.stem}_8bit.png"
                Image.fromarray(eight_bit_values(saved)).save(reference)
        out[mode] = (path, reference)
    photo = exif_photo(folder / "photo.jpg")
    gif = animated_gif(folder / "anim.gif")
    out["exif"], out["gif"] = (photo, photo), (gif, gif)
    return out


def ours(model_dir: Path, path: Path) -> tuple[np.ndarray, np.ndarray]:
    processor = AutoProcessorMIX.from_pretrained(model_dir)
    encoder = adapter_for(model_dir).sample_processor(processor, 1024)
    out = encoder.images([str(path)])
    return out["pixel_values"], out["image_grid_thw"]


@requires_reference
def test_every_mode_matches_transformers(tiny_model_dir: Path, images, tmp_path: Path) -> None:
    names = list(images)
    out = tmp_path / "ref.npz"
    proc = subprocess.run([REF_PYTHON, str(HERE / "hf_image_modes.py"), str(tiny_model_dir), str(out),
                           *(str(images[n][1]) for n in names)], capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    ref = np.load(out)
    for k, name in enumerate(names):
        pixels, grid = ours(tiny_model_dir, images[name][0])
        np.testing.assert_array_equal(grid, ref[f"{k}_grid"], err_msg=name)
        np.testing.assert_allclose(pixels, ref[str(k)], atol=1e-5, err_msg=name)
