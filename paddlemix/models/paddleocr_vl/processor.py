"""PaddleOCR-VL's processor: paddleformers' `PaddleOCRVLProcessor` (tokenizer + image processor) with the chat
template the folder carries, or its version's (`templates.chat_template`) when it carries none."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from paddlemix.models.paddleocr_vl.templates import chat_template, version_of
from paddlemix.processors.template_files import read_folder_template
from paddlemix.utils.io import read_json

logger = logging.getLogger(__name__)


def pixel_limits(folder: str | Path) -> tuple[int | None, int | None]:
    """(min_pixels, max_pixels) of the folder's image processor settings: `min_pixels` / `max_pixels` as the
    released folders (and paddleformers) write them, or `size.shortest_edge` / `size.longest_edge` as transformers
    5.x writes them (nested under "image_processor" in processor_config.json), which paddleformers 1.2 ignores."""
    folder = Path(folder)
    settings: dict[str, Any] = {}
    if (folder / "preprocessor_config.json").is_file():
        settings = read_json(folder / "preprocessor_config.json")
    elif (folder / "processor_config.json").is_file():
        settings = read_json(folder / "processor_config.json").get("image_processor") or {}
    size = settings.get("size") or {}
    low = settings.get("min_pixels", size.get("shortest_edge", size.get("min_pixels")))
    high = settings.get("max_pixels", size.get("longest_edge", size.get("max_pixels")))
    return (int(low) if low else None), (int(high) if high else None)


class PaddleOCRVLProcessorMIX:
    """Loader of paddleformers' PaddleOCR-VL processor (the `processor_class` of the family adapter)."""

    @classmethod
    def from_pretrained(cls, path: str | Path, **kwargs: Any) -> Any:
        """The processor of a model folder (read only); its `chat_template` is the folder's own, else the one of
        the folder's PaddleOCR-VL version (see `templates.version_of`)."""
        from paddleformers.transformers.paddleocr_vl.processor import PaddleOCRVLProcessor

        processor = PaddleOCRVLProcessor.from_pretrained(str(path), **kwargs)
        min_pixels, max_pixels = pixel_limits(path)
        if min_pixels or max_pixels:
            processor.image_processor.set_pixels(min_pixels, max_pixels, msg=str(path))
        template = read_folder_template(path)
        if template is None:
            config = read_json(Path(path) / "config.json") if (Path(path) / "config.json").is_file() else {}
            version = version_of(path, config)
            template = chat_template(version)
            logger.info("%s: no chat template in the folder; using PaddleOCR-VL %s's", path, version)
        processor.chat_template = template
        processor.tokenizer.chat_template = template
        return processor
