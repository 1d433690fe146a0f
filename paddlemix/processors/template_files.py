"""The chat template a run trained with, carried into every folder it writes, where transformers reads it.

transformers 4.57 reads a folder's template from `chat_template.jinja` first; processors fall back to
`chat_template.json` (`{"chat_template": ...}`) and tokenizers to the `chat_template` entry of
`tokenizer_config.json` (a string, or a list of `{"name", "template"}` whose "default" is used). paddleformers 1.2
reads the same files. Writing the template into all of them that exist keeps every reader on the trained format.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from paddlemix.processors.chat_template import paddlemix_to_jinja, read_template_file
from paddlemix.utils.io import read_json, write_json

logger = logging.getLogger(__name__)

JINJA_FILE = "chat_template.jinja"
PROCESSOR_FILE = "chat_template.json"
TOKENIZER_CONFIG = "tokenizer_config.json"


def _default_of(entry: Any) -> str | None:
    """A `chat_template` value as a string: itself, or the "default" of a list of named templates."""
    if isinstance(entry, list):
        named = {t.get("name"): t.get("template") for t in entry if isinstance(t, dict)}
        entry = named.get("default")
    return entry if isinstance(entry, str) else None


def read_folder_template(folder: str | Path) -> str | None:
    """The chat template a model or adapter folder carries, in transformers 4.57's order of precedence
    (chat_template.jinja, chat_template.json, tokenizer_config.json), or None."""
    folder = Path(folder)
    if (folder / JINJA_FILE).is_file():
        return (folder / JINJA_FILE).read_text(encoding="utf-8")
    for name in (PROCESSOR_FILE, TOKENIZER_CONFIG):
        if (folder / name).is_file():
            template = _default_of(read_json(folder / name).get("chat_template"))
            if template:
                return template
    return None


def trained_template_file(lora_path: str | Path | None) -> str | None:
    """The template file an adapter folder carries (the one its training used), which prompts must follow rather
    than the base model's; None without one."""
    path = Path(lora_path or "") / JINJA_FILE
    return str(path) if lora_path and path.is_file() else None


def write_chat_template(folder: str | Path, template: str) -> list[str]:
    """Make `folder` carry `template`: write chat_template.jinja, and set the `chat_template` of the
    chat_template.json, tokenizer_config.json and processor_config.json already there. Returns the files written."""
    folder = Path(folder)
    (folder / JINJA_FILE).write_text(template, encoding="utf-8")
    written = [JINJA_FILE]
    for name in (PROCESSOR_FILE, TOKENIZER_CONFIG, "processor_config.json"):
        path = folder / name
        if not path.is_file():
            continue
        config = read_json(path)
        entry = config.get("chat_template")
        if name == "processor_config.json" and entry is None:
            continue
        if isinstance(entry, list):  # named templates: replace the default one only
            others = [t for t in entry if isinstance(t, dict) and t.get("name") != "default"]
            config["chat_template"] = [{"name": "default", "template": template}, *others]
        else:
            config["chat_template"] = template
        write_json(config, path)
        written.append(name)
    return written


def source_template(path: str | Path | None, model_dir: str | Path, image_placeholder: str) -> str | None:
    """The Jinja text of one source's template: a Jinja file as it is, PaddleMIX's chat_template.json converted
    (`paddlemix_to_jinja`), and without a path the model's own."""
    if path is None:
        return read_folder_template(model_dir)
    spec = read_template_file(path)
    return paddlemix_to_jinja(spec, image_placeholder) if isinstance(spec, dict) else spec


def trained_templates(sources: Sequence[Any], model_dir: str | Path, image_placeholder: str) -> list[dict[str, Any]]:
    """One record per training source: {"source", "chat_template" (the path or None), "jinja"}."""
    from paddlemix.datasets.encoded import source_names

    return [
        {"source": name, "chat_template": s.chat_template,
         "jinja": source_template(s.chat_template, model_dir, image_placeholder)}
        for name, s in zip(source_names(sources), sources)
    ]  # fmt: skip


def chosen_template(records: Sequence[dict[str, Any]], warn: bool = False) -> str | None:
    """The template written into outputs: the first source's. With `warn`, log once when sources differ."""
    if not records:
        return None
    distinct = {r["jinja"] for r in records}
    if warn and len(distinct) > 1:
        logger.warning(
            "the training sources use %d different chat templates (%s); the outputs carry the first one, of "
            'source "%s". All are recorded under "chat_templates" in run_args.json.',
            len(distinct), ", ".join(str(r["chat_template"] or "the model's own") for r in records),
            records[0]["source"],
        )  # fmt: skip
    return records[0]["jinja"]


def template_mismatch(folder: str | Path, given: str | Path, image_placeholder: str) -> str | None:
    """A warning when the template file `given` renders differently from the one `folder` carries (the one its
    model was trained with), else None."""
    recorded = read_folder_template(folder)
    if recorded is None or source_template(given, folder, image_placeholder) == recorded:
        return None
    return (
        f"--chat_template {given} differs from the chat template {folder} was trained with (its "
        f"{JINJA_FILE} / {TOKENIZER_CONFIG}); the model will see prompts in a format it was not trained on. Leave "
        "--chat_template out to use the trained one."
    )
