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


class PaddleOCRVLProcessorMIX:
    """Loader of paddleformers' PaddleOCR-VL processor (the `processor_class` of the family adapter)."""

    @classmethod
    def from_pretrained(cls, path: str | Path, **kwargs: Any) -> Any:
        """The processor of a model folder (read only); its `chat_template` is the folder's own, else the one of
        the folder's PaddleOCR-VL version (see `templates.version_of`)."""
        from paddleformers.transformers.paddleocr_vl.processor import PaddleOCRVLProcessor

        processor = PaddleOCRVLProcessor.from_pretrained(str(path), **kwargs)
        template = read_folder_template(path)
        if template is None:
            config = read_json(Path(path) / "config.json") if (Path(path) / "config.json").is_file() else {}
            version = version_of(path, config)
            template = chat_template(version)
            logger.info("%s: no chat template in the folder; using PaddleOCR-VL %s's", path, version)
        processor.chat_template = template
        processor.tokenizer.chat_template = template
        return processor
