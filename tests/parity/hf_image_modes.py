"""Pixel values of images read the way transformers 4.57 reads them: `transformers.image_utils.load_image`
(EXIF orientation, convert("RGB")) fed to the folder's Qwen2-VL/2.5-VL image processor (slow, numpy).

Runs in the reference environment: python hf_image_modes.py MODEL_DIR OUT.npz IMAGE [IMAGE ...]
Writes one array per image, keyed by its position ("0", "1", ...), plus "<k>_grid" with its image_grid_thw.
"""

from __future__ import annotations

import sys

import numpy as np
from transformers import AutoImageProcessor
from transformers.image_utils import load_image


def main() -> None:
    model_dir, out, *images = sys.argv[1:]
    processor = AutoImageProcessor.from_pretrained(model_dir, use_fast=False)
    arrays = {}
    for k, path in enumerate(images):
        batch = processor(images=[load_image(path)], return_tensors="np")
        arrays[str(k)] = np.asarray(batch["pixel_values"], dtype="float32")
        arrays[f"{k}_grid"] = np.asarray(batch["image_grid_thw"])
    np.savez(out, **arrays)


if __name__ == "__main__":
    main()
