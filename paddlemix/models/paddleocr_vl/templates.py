"""PaddleOCR-VL's chat templates by model version, for folders that carry none of their own.

A model folder's own template (chat_template.jinja, chat_template.json, tokenizer_config.json) always wins; these
are the fallback. Both versions render one user turn as `<|begin_of_sentence|>User: ` + one image marker per image
+ the task prompt + a newline, then the assistant's answer closed by the eos token (`</s>`):
- v1 (PaddleOCR-VL, 0.9B): the generation prompt is `Assistant: ` (a trailing space);
- 1.5 and 1.6: PaddleX's inference prompt ends the user turn with `Assistant:\n` (a newline).
Source: the `chat_template.jinja` of the released PaddleOCR-VL folders and the prompts PaddleX and vLLM clients
send (`<|begin_of_sentence|>User: <|IMAGE_START|><|IMAGE_PLACEHOLDER|><|IMAGE_END|>OCR:\nAssistant:\n` for 1.5/1.6).

The image marker is written out rather than read from an `image_token` variable: transformers 5.x passes the
tokenizer's `image_token` (`<|IMAGE_PLACEHOLDER|>` alone) to templates, which would drop the start and end marks.

Task prompts the released models were trained with: `OCR:`, `Table Recognition:`, `Formula Recognition:`,
`Chart Recognition:`, and from 1.5 on `Spotting:` and `Seal Recognition:` (`TASK_PROMPTS`).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

logger = logging.getLogger(__name__)

IMAGE_MARKER = "<|IMAGE_START|><|IMAGE_PLACEHOLDER|><|IMAGE_END|>"
VERSIONS = ("1.0", "1.5", "1.6")
TASK_PROMPTS: dict[str, tuple[str, ...]] = {
    "1.0": ("OCR:", "Table Recognition:", "Formula Recognition:", "Chart Recognition:"),
    "1.5": ("OCR:", "Table Recognition:", "Formula Recognition:", "Chart Recognition:", "Spotting:",
            "Seal Recognition:"),
}  # fmt: skip
TASK_PROMPTS["1.6"] = TASK_PROMPTS["1.5"]

_TEMPLATE = """{%- if not add_generation_prompt is defined -%}{%- set add_generation_prompt = false -%}{%- endif -%}
{%- if not cls_token is defined -%}{%- set cls_token = "<|begin_of_sentence|>" -%}{%- endif -%}
{%- if not eos_token is defined -%}{%- set eos_token = "</s>" -%}{%- endif -%}
{{- cls_token -}}
{%- for message in messages -%}
    {%- if message["role"] == "user" -%}
        {{- "User: " -}}
        {%- for content in message["content"] -%}
            {%- if content["type"] == "image" -%}{{ "IMAGE_MARKER" }}{%- endif -%}
        {%- endfor -%}
        {%- for content in message["content"] -%}
            {%- if content["type"] == "text" -%}{{ content["text"] }}{%- endif -%}
        {%- endfor -%}
        {{ "\\n" -}}
    {%- elif message["role"] == "assistant" -%}
        {{- "ASSISTANT_PROMPT" -}}
        {%- for content in message["content"] -%}
            {%- if content["type"] == "text" -%}{{ content["text"] }}{%- endif -%}
        {%- endfor -%}
        {{ eos_token -}}
    {%- elif message["role"] == "system" -%}
        {%- for content in message["content"] -%}
            {%- if content["type"] == "text" -%}{{ content["text"] + "\\n" }}{%- endif -%}
        {%- endfor -%}
    {%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}{{- "ASSISTANT_PROMPT" -}}{%- endif -%}
"""
# What starts an assistant turn, per version (JSON-escaped inside the Jinja string literal).
ASSISTANT_PROMPT = {"1.0": "Assistant: ", "1.5": "Assistant:\\n", "1.6": "Assistant:\\n"}


def chat_template(version: str) -> str:
    """The Jinja chat template of a PaddleOCR-VL version ("1.0", "1.5" or "1.6").

    Raises:
        ValueError: an unknown version.
    """
    if version not in VERSIONS:
        raise ValueError(f"PaddleOCR-VL version {version!r} is not one of {', '.join(VERSIONS)}")
    return _TEMPLATE.replace("IMAGE_MARKER", IMAGE_MARKER).replace("ASSISTANT_PROMPT", ASSISTANT_PROMPT[version])


_VERSION_IN_NAME = re.compile(r"paddleocr[-_]?vl[-_]?(1\.[56])", re.IGNORECASE)


def version_of(folder: str | Path, config: dict | None = None) -> str:
    """The PaddleOCR-VL version of a model folder without a template of its own: config.json's
    `paddleocr_vl_version` when present (this toolkit writes it into tiny models), else the version in the folder's
    name as released (`PaddleOCR-VL-1.5`, `PaddleOCR-VL-1.6`), else "1.0", with a warning saying so."""
    stated = (config or {}).get("paddleocr_vl_version")
    if stated in VERSIONS:
        return stated
    found = _VERSION_IN_NAME.search(Path(folder).resolve().name)
    if found:
        return found.group(1)
    logger.warning(
        "%s carries no chat template and its name names no PaddleOCR-VL version; using the v1 template "
        '(prompt ends with "Assistant: "). Add the release\'s chat_template.jinja to the folder, or set '
        '"paddleocr_vl_version" ("1.5" / "1.6") in its config.json.',
        folder,
    )
    return "1.0"
