"""The trained chat template written where transformers reads it, recorded per source, and checked by infer."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from paddlemix.arguments import DatasetSource
from paddlemix.processors.chat_template import paddlemix_to_jinja
from paddlemix.processors.template_files import (
    chosen_template,
    read_folder_template,
    template_mismatch,
    trained_templates,
    write_chat_template,
)

SPEC = {"system": "", "conversation": ["Q: {{user}}\nA:", " {{bot}}\n"], "query": "Q: {{query}}\nA:"}
PLACEHOLDER = "<|vision_start|><|image_pad|><|vision_end|>"


def model_folder(tmp_path: Path, template: str = "OLD") -> Path:
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "tokenizer_config.json").write_text(json.dumps({"chat_template": template, "eos_token": "</s>"}))
    (folder / "chat_template.json").write_text(json.dumps({"chat_template": template}))
    (folder / "processor_config.json").write_text(json.dumps({"processor_class": "X"}))
    return folder


def test_written_template_replaces_every_copy_transformers_reads(tmp_path: Path) -> None:
    folder = model_folder(tmp_path)
    assert read_folder_template(folder) == "OLD"
    written = write_chat_template(folder, "NEW")
    assert written == ["chat_template.jinja", "chat_template.json", "tokenizer_config.json"]
    assert (folder / "chat_template.jinja").read_text() == "NEW"
    assert json.loads((folder / "chat_template.json").read_text()) == {"chat_template": "NEW"}
    assert json.loads((folder / "tokenizer_config.json").read_text()) == {"chat_template": "NEW", "eos_token": "</s>"}
    assert "chat_template" not in json.loads((folder / "processor_config.json").read_text())


def test_named_templates_keep_the_others(tmp_path: Path) -> None:
    folder = tmp_path
    named = [{"name": "default", "template": "A"}, {"name": "tool_use", "template": "T"}]
    (folder / "tokenizer_config.json").write_text(json.dumps({"chat_template": named}))
    assert read_folder_template(folder) == "A"
    write_chat_template(folder, "B")
    assert json.loads((folder / "tokenizer_config.json").read_text())["chat_template"] == [
        {"name": "default", "template": "B"}, {"name": "tool_use", "template": "T"}]  # fmt: skip
    (folder / "chat_template.jinja").unlink()
    assert read_folder_template(folder) == "B"


def test_sources_are_recorded_and_the_first_is_chosen_with_one_warning(tmp_path: Path, caplog) -> None:
    folder = model_folder(tmp_path)
    (tmp_path / "t.json").write_text(json.dumps(SPEC))
    (tmp_path / "t.jinja").write_text("{{ messages }}")
    data = tmp_path / "d.jsonl"
    data.write_text("")
    sources = [DatasetSource(name="chatml_dataset", data_files=str(data), chat_template=str(tmp_path / "t.json")),
               DatasetSource(name="chatml_dataset", data_files=str(data), chat_template=str(tmp_path / "t.jinja")),
               DatasetSource(name="chatml_dataset", data_files=str(data))]  # fmt: skip
    records = trained_templates(sources, folder, PLACEHOLDER)
    assert [r["jinja"] for r in records] == [paddlemix_to_jinja(SPEC, PLACEHOLDER), "{{ messages }}", "OLD"]
    assert [r["chat_template"] for r in records] == [str(tmp_path / "t.json"), str(tmp_path / "t.jinja"), None]
    with caplog.at_level(logging.WARNING):
        assert chosen_template(records, warn=True) == records[0]["jinja"]
    assert len([r for r in caplog.records if "3 different chat templates" in r.getMessage()]) == 1
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        chosen_template(records[:1] * 2, warn=True)
    assert not caplog.records


def test_infer_warns_only_for_another_template(tmp_path: Path) -> None:
    folder = model_folder(tmp_path)
    (tmp_path / "t.json").write_text(json.dumps(SPEC))
    write_chat_template(folder, paddlemix_to_jinja(SPEC, PLACEHOLDER))
    assert template_mismatch(folder, tmp_path / "t.json", PLACEHOLDER) is None
    (tmp_path / "other.jinja").write_text("{{ messages }}")
    warning = template_mismatch(folder, tmp_path / "other.jinja", PLACEHOLDER)
    assert warning and "other.jinja differs from the chat template" in warning
