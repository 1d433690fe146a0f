"""Load a `Generator` for serving or evaluation exactly as tools/infer.py does: the adapter's own chat template
(unless one is given), the training's `image_resolution` and `split_special_tokens` from run_args.json, the
model folder's generation_config.json for stop ids and decoding defaults."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from paddlemix.processors.images import DEFAULT_MAX_IMAGE_PIXELS


def add_model_flags(p: argparse.ArgumentParser) -> None:
    """The flags that pick and load the model, shared by serve.py and evaluate.py (infer.py's names)."""
    from paddlemix.tools.infer import _bool, add_video_flags

    p.add_argument("--model_name_or_path", help="model folder (trained, merged, or the base of --lora_path)")
    p.add_argument("--lora_path", help="LoRA adapter folder written by training")
    p.add_argument("--chat_template", help="template file (default: the adapter's, else the model folder's)")
    p.add_argument("--device", default="cpu", choices=["cpu", "gpu", "npu", "xpu"])
    p.add_argument("--image_resolution", type=int, help="bound the longer image side (default: the training's)")
    p.add_argument("--split_special_tokens", type=_bool, help="default: the training's, else true")
    p.add_argument("--max_image_pixels", type=int, default=DEFAULT_MAX_IMAGE_PIXELS,
                   help="refuse images with more pixels (decompression bombs)")  # fmt: skip
    add_video_flags(p)


def load_generator(args: argparse.Namespace) -> Any:
    """The `Generator` of `args` (flags of `add_model_flags`): the one loading path of infer.py, serve.py and
    evaluate.py."""
    from paddlemix.inference.generation import Generator
    from paddlemix.processors.images import ImageReader
    from paddlemix.processors.template_files import trained_template_file
    from paddlemix.tools.infer import training_data_settings, warn_on_other_template
    from paddlemix.utils.device import resolve_device

    chat_template = args.chat_template or trained_template_file(args.lora_path)
    if args.chat_template:
        warn_on_other_template(args.model_name_or_path, args.lora_path, args.chat_template)
    data_settings = training_data_settings(args)
    print("chat template:", chat_template or "the model folder's own", file=sys.stderr, flush=True)
    generator = Generator.from_pretrained(
        args.model_name_or_path, args.lora_path, chat_template, resolve_device(args.device)
    )
    max_pixels = getattr(args, "max_image_pixels", DEFAULT_MAX_IMAGE_PIXELS)
    generator.encoder.reader = ImageReader(max_pixels=max_pixels, image_resolution=data_settings["image_resolution"])
    generator.encoder.split_special_tokens = data_settings["split_special_tokens"]
    set_video_settings(generator.encoder, data_settings)
    return generator


def set_video_settings(encoder: Any, settings: dict) -> None:
    """Sample videos with the training's settings (run_args.json keys, see `DataArgs`), warning once when the
    per-frame pixel cap is below the per-frame minimum."""
    from paddlemix.arguments import DataArgs
    from paddlemix.datasets.encoded import video_defaults, video_pixels_warning, warn_once

    keys = ("video_fps", "video_maxlen", "video_resolution", "video_min_pixels", "video_max_pixels")
    data = DataArgs(**{k: settings.get(k) for k in keys})
    encoder.video_options = video_defaults(data)
    if encoder.layout is not None:
        warn_once(video_pixels_warning(data, encoder.layout.factor))
    if "max_video_seconds" in settings:
        encoder.max_video_seconds = settings["max_video_seconds"]
