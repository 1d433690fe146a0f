"""The processor of LLaVA folders: the language model's tokenizer, CLIP's image preprocessing and the chat template.

CLIP preprocessing is written here with numpy and PIL rather than taken from transformers, because the installed
transformers (5.x, a paddleformers dependency) is not the 4.57 release our folders are checked against; the steps
and their order are CLIP's: RGB, bicubic resize of the shortest edge, center crop, rescale to [0, 1], normalize.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from math import ceil
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from paddlemix.utils.errors import UserError
from paddlemix.utils.io import read_json

IMAGE_TOKEN = "<image>"
# OpenAI CLIP's pixel statistics (Qwen-VL's image processors use them too).
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


def clip_image_settings(raw: dict[str, Any]) -> dict[str, Any]:
    """A CLIPImageProcessor config with `size` as {"shortest_edge"} or {"height", "width"} and `crop_size` as
    {"height", "width"}, whether the file wrote them as numbers or dicts (older CLIP folders use numbers)."""
    settings = dict(raw)
    if isinstance(settings.get("size"), int):
        settings["size"] = {"shortest_edge": settings["size"]}
    crop = settings.get("crop_size")
    if isinstance(crop, int):
        settings["crop_size"] = {"height": crop, "width": crop}
    return settings


def _fit(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Center crop [H, W, C] to height x width; where the image is smaller it is centred on zeros first."""
    for axis, target in ((0, height), (1, width)):
        size = image.shape[axis]
        if size >= target:
            start = (size - target) // 2
            image = image.take(range(start, start + target), axis=axis)
        else:
            pad = [(0, 0)] * image.ndim
            before = ceil((target - size) / 2)
            pad[axis] = (before, target - size - before)
            image = np.pad(image, pad)
    return image


@dataclass(frozen=True)
class LlavaImageProcessor:
    """CLIP image preprocessing, equal to transformers 4.57's slow `CLIPImageProcessor`; each image is one frame of
    (H / patch) x (W / patch) patches and every patch is one visual token (`merge_size` 1)."""

    size: dict[str, int]
    crop_size: dict[str, int]
    patch_size: int
    image_mean: tuple[float, ...]
    image_std: tuple[float, ...]
    resample: int = 3
    rescale_factor: float = 1 / 255
    do_resize: bool = True
    do_center_crop: bool = True
    do_rescale: bool = True
    do_normalize: bool = True
    merge_size: int = 1

    @classmethod
    def from_config(cls, raw: dict[str, Any], patch_size: int) -> LlavaImageProcessor:
        """From the fields of a preprocessor_config.json (other fields are ignored)."""
        s = clip_image_settings(raw)
        flags = {k: bool(s.get(k, True)) for k in ("do_resize", "do_center_crop", "do_rescale", "do_normalize")}
        return cls(
            size=dict(s["size"]),
            crop_size=dict(s.get("crop_size") or {}),
            patch_size=int(patch_size),
            image_mean=tuple(s["image_mean"]),
            image_std=tuple(s["image_std"]),
            resample=int(s.get("resample", 3)),
            rescale_factor=float(s.get("rescale_factor", 1 / 255)),
            **flags,
        )

    def resized_size(self, width: int, height: int) -> tuple[int, int]:
        """(height, width) after the resize step: the shortest edge scaled to `size`, the other truncated."""
        if "shortest_edge" not in self.size:
            return self.size["height"], self.size["width"]
        short, long = sorted((width, height))
        new_short, new_long = self.size["shortest_edge"], int(self.size["shortest_edge"] * long / short)
        return (new_long, new_short) if width <= height else (new_short, new_long)

    def output_size(self, width: int, height: int) -> tuple[int, int]:
        """(height, width) of the pixel values of a width x height image."""
        if self.do_center_crop:
            return self.crop_size["height"], self.crop_size["width"]
        return self.resized_size(width, height) if self.do_resize else (height, width)

    def image_grid(self, width: int, height: int) -> tuple[int, int, int]:
        """The (t, h, w) patch grid of a width x height image, from its size alone."""
        h, w = self.output_size(width, height)
        return 1, h // self.patch_size, w // self.patch_size

    def preprocess(self, image: Image.Image) -> np.ndarray:
        """One image as float32 [3, H, W]."""
        image = image.convert("RGB")
        if self.do_resize:
            h, w = self.resized_size(*image.size)
            image = image.resize((w, h), resample=Image.Resampling(self.resample), reducing_gap=None)
        pixels = np.asarray(image)  # [H, W, 3] uint8
        if self.do_center_crop:
            pixels = _fit(pixels, self.crop_size["height"], self.crop_size["width"])
        if self.do_rescale:
            pixels = (pixels.astype(np.float64) * self.rescale_factor).astype(np.float32)
        pixels = pixels.astype(np.float32)
        if self.do_normalize:
            mean, std = np.float32(self.image_mean), np.float32(self.image_std)
            pixels = (pixels - mean) / std
        return np.ascontiguousarray(pixels.transpose(2, 0, 1))

    def __call__(
        self, images: Image.Image | Sequence[Image.Image], return_tensors: str = "np"
    ) -> dict[str, np.ndarray]:
        """{"pixel_values": float32 [N, 3, H, W], "image_grid_thw": int64 [N, 3]} for N images."""
        if return_tensors != "np":
            raise ValueError(f'return_tensors must be "np", got {return_tensors!r}')
        images = [images] if isinstance(images, Image.Image) else list(images)
        pixels = np.stack([self.preprocess(image) for image in images])  # [N, 3, H, W]
        grid = [(1, pixels.shape[2] // self.patch_size, pixels.shape[3] // self.patch_size)] * len(images)
        return {"pixel_values": pixels, "image_grid_thw": np.asarray(grid, dtype=np.int64).reshape(-1, 3)}


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise UserError(f"{path.parent} is not a LLaVA model folder: {path.name} is missing.")
    return read_json(path)


# Keys that name classes rather than settings: they may differ between the two files without changing the pixels.
_CLASS_KEYS = ("processor_class", "image_processor_type")


def image_processor_settings(folder: Path, processor_config: dict[str, Any]) -> dict[str, Any]:
    """The image processor's settings of a folder from either transformers generation: preprocessor_config.json
    (4.x) or the `image_processor` object nested in processor_config.json (5.x writes no preprocessor_config.json).

    Raises:
        UserError: neither is there, or both are and disagree on a setting.
    """
    nested = processor_config.get("image_processor")
    path = folder / "preprocessor_config.json"
    if not path.is_file():
        if not isinstance(nested, dict):
            raise UserError(
                f"{folder} is not a LLaVA model folder: it has no preprocessor_config.json and its "
                'processor_config.json has no "image_processor" settings. Save the processor with transformers '
                "(processor.save_pretrained) into the folder."
            )
        return nested
    settings = read_json(path)
    if isinstance(nested, dict):
        differ = sorted(
            k for k in nested.keys() & settings.keys() if k not in _CLASS_KEYS and nested[k] != settings[k]
        )
        if differ:
            raise UserError(
                f'{folder}: preprocessor_config.json and processor_config.json\'s "image_processor" disagree on '
                f"{', '.join(differ)}; it is unclear which settings the model was trained with. Delete one of them "
                "(transformers 5.x reads processor_config.json, 4.x preprocessor_config.json)."
            )
    return settings


@dataclass(frozen=True)
class LlavaProcessorMIX:
    """A LLaVA folder's tokenizer (paddleformers), image processor and chat template (chat_template.json)."""

    tokenizer: Any
    image_processor: LlavaImageProcessor
    chat_template: str | None
    image_token: str = IMAGE_TOKEN
    vision_feature_select_strategy: str = "default"  # "full" keeps CLIP's class token: one more visual token
    num_additional_image_tokens: int = 1

    @classmethod
    def from_pretrained(cls, path: str | Path, use_fast: bool = False) -> LlavaProcessorMIX:
        """Load from a LLaVA folder; `use_fast` is accepted for the adapter's signature (there is one image path)."""
        from paddleformers.transformers import AutoTokenizer

        folder = Path(path)
        processor_config = _read_json(folder / "processor_config.json")
        patch_size = processor_config.get("patch_size")
        if patch_size is None:  # folders saved without it: the vision tower's own patch size
            patch_size = _read_json(folder / "config.json")["vision_config"]["patch_size"]
        image_settings = image_processor_settings(folder, processor_config)
        image_processor = LlavaImageProcessor.from_config(image_settings, patch_size)
        template_path, jinja_path = folder / "chat_template.json", folder / "chat_template.jinja"
        template = _read_json(template_path).get("chat_template") if template_path.is_file() else None
        if template is None and jinja_path.is_file():  # what transformers 4.57 and 5.x write
            template = jinja_path.read_text(encoding="utf-8")
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
        return cls(
            tokenizer,
            image_processor,
            template or getattr(tokenizer, "chat_template", None),
            processor_config.get("image_token", IMAGE_TOKEN),
            processor_config.get("vision_feature_select_strategy", "default"),
            int(processor_config.get("num_additional_image_tokens", 1)),
        )
