"""PaddleOCR-VL's chat templates by version: the prompts PaddleX sends, byte for byte, and training prompts equal to
them; the folder's own template first, the version's otherwise."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from paddlemix.auto import AutoProcessorMIX
from paddlemix.datasets.conversation import Message
from paddlemix.models.paddleocr_vl.templates import TASK_PROMPTS, chat_template, version_of
from paddlemix.processors.chat_template import template_for
from paddlemix.testing.tiny_paddleocr_vl import build_tiny_paddleocr_vl

MARK = "<|IMAGE_START|><|IMAGE_PLACEHOLDER|><|IMAGE_END|>"
# The inference prompts of the released models, as PaddleX and vLLM clients send them (written out by hand).
PADDLEX_PROMPT = {
    "1.0": "<|begin_of_sentence|>User: " + MARK + "OCR:\nAssistant: ",
    "1.5": "<|begin_of_sentence|>User: " + MARK + "OCR:\nAssistant:\n",
    "1.6": "<|begin_of_sentence|>User: " + MARK + "OCR:\nAssistant:\n",
}


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    """One tiny folder per version, each without a template of its own (the processor picks the version's)."""
    return {
        v: build_tiny_paddleocr_vl(tmp_path_factory.mktemp(f"ocr_{v}"), version=v, with_template=False, vocab_size=300)
        for v in ("1.0", "1.5", "1.6")
    }


@pytest.mark.parametrize("version", ["1.0", "1.5", "1.6"])
def test_inference_prompt_is_paddlex_byte_for_byte(folders, version: str) -> None:
    processor = AutoProcessorMIX.from_pretrained(folders[version])
    assert processor.chat_template == chat_template(version)
    template = template_for(processor)
    assert template.prompt([Message("user", MARK + "OCR:")]) == PADDLEX_PROMPT[version]


@pytest.mark.parametrize("version", ["1.0", "1.5", "1.6"])
def test_training_text_before_the_answer_is_the_inference_prompt(folders, version: str) -> None:
    template = template_for(AutoProcessorMIX.from_pretrained(folders[version]))
    segments = template.segments([Message("user", MARK + "OCR:"), Message("assistant", "Hello 42")])
    assert segments[0] == (PADDLEX_PROMPT[version], False)
    assert segments[1] == ("Hello 42</s>", True)
    assert template.stop_token_id == AutoProcessorMIX.from_pretrained(folders[version]).tokenizer.eos_token_id


def test_folder_template_wins_over_the_version(tmp_path: Path, folders) -> None:
    folder = tmp_path / "model"
    shutil.copytree(folders["1.5"], folder)
    (folder / "chat_template.jinja").write_text(chat_template("1.0"), encoding="utf-8")
    assert AutoProcessorMIX.from_pretrained(folder).chat_template == chat_template("1.0")


def test_version_from_config_then_folder_name(tmp_path: Path, caplog) -> None:
    assert version_of(tmp_path, {"paddleocr_vl_version": "1.6"}) == "1.6"
    assert version_of(tmp_path / "PaddleOCR-VL-1.5", {}) == "1.5"
    assert version_of(tmp_path / "paddleocr_vl_1.6-sft", {}) == "1.6"
    assert version_of(tmp_path / "PaddleOCR-VL", {}) == "1.0"
    assert "v1 template" in caplog.text


def test_task_prompts_by_version() -> None:
    assert "Spotting:" not in TASK_PROMPTS["1.0"] and "Seal Recognition:" in TASK_PROMPTS["1.6"]
    assert set(TASK_PROMPTS["1.0"]) < set(TASK_PROMPTS["1.5"])


def test_unknown_version_is_an_error() -> None:
    with pytest.raises(ValueError, match="2.0"):
        chat_template("2.0")


def test_config_version_key_is_read(folders) -> None:
    assert json.loads((folders["1.5"] / "config.json").read_text())["paddleocr_vl_version"] == "1.5"
