"""`train_type` presets and freeze switches decide what `build_model` trains, for full and LoRA runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from paddlemix import arguments
from paddlemix.models import adapter_for
from paddlemix.peft.freeze import matches
from paddlemix.peft.lora import base_model
from paddlemix.trainer.sft import build_model
from paddlemix.utils.errors import UserError


def trainable_groups(model_dir: Path, tmp_path: Path, data: Path, **keys) -> dict[str, str]:
    """Per module group: "full", "lora" (only adapter matrices train), "frozen" or "mixed"."""
    raw = {
        "model_name_or_path": str(model_dir),
        "output_dir": str(tmp_path / "out"),
        "dataset": {"train": [{"name": "chatml_dataset", "data_files": str(data)}]},
        "device": "cpu",
        **keys,
    }
    args = arguments.parse(raw, "test.json")
    adapter = adapter_for(model_dir)
    model = base_model(build_model(args, adapter))
    out = {}
    for group, patterns in adapter.module_groups.items():
        params = [(n, p) for n, p in model.named_parameters() if matches(n, patterns)]
        lora = {not p.stop_gradient for n, p in params if "lora_" in n}
        plain = {not p.stop_gradient for n, p in params if "lora_" not in n}
        if plain == {True}:
            out[group] = "full"
        elif plain == {False}:
            out[group] = "lora" if lora == {True} else "frozen"
        else:
            out[group] = "mixed"
    return out


@pytest.mark.parametrize(
    "keys, expected",
    [
        ({"train_type": "use_lora"}, {"vision": "frozen", "projector": "full", "llm": "lora"}),
        ({"train_type": "use_lora", "freeze_projector": True}, {"vision": "frozen", "projector": "frozen", "llm": "lora"}),
        ({"lora": True}, {"vision": "frozen", "projector": "frozen", "llm": "lora"}),
        ({"train_type": "freeze_vision"}, {"vision": "frozen", "projector": "full", "llm": "full"}),
        ({"train_type": "none"}, {"vision": "full", "projector": "full", "llm": "full"}),
        ({"train_type": "none", "freeze_llm": True}, {"vision": "full", "projector": "full", "llm": "frozen"}),
        (
            {"train_type": "freeze_vision", "freeze_include": ["model.language_model.*"],
             "freeze_exclude": ["model.language_model.norm.*"]},
            {"vision": "frozen", "projector": "full", "llm": "mixed"},
        ),
    ],
)  # fmt: skip
def test_presets_map_onto_module_groups(tiny_model_dir, shapes_data, tmp_path, keys, expected) -> None:
    assert trainable_groups(tiny_model_dir, tmp_path, shapes_data["train"], **keys) == expected


def test_adapter_rank_and_alpha_over_the_argument_file_are_logged(tmp_path: Path, caplog) -> None:
    import json
    import logging

    from paddlemix.arguments import LoraArgs
    from paddlemix.trainer.sft import note_adapter_overrides

    (tmp_path / "adapter_config.json").write_text(json.dumps({"r": 4, "lora_alpha": 16}))
    with caplog.at_level(logging.INFO, logger="paddlemix.trainer.sft"):
        note_adapter_overrides(LoraArgs(lora=True, lora_path=str(tmp_path), lora_rank=8, lora_alpha=16), "a.json")
        note_adapter_overrides(LoraArgs(lora=True, lora_path=str(tmp_path), lora_rank=4, lora_alpha=16), "a.json")
    (line,) = [r.getMessage() for r in caplog.records]
    assert "lora_rank 8 -> 4" in line and "lora_alpha" not in line.split("sets", 1)[1] and "a.json" in line


@pytest.mark.parametrize(
    "override, message",
    [(["--lora", "true", "--lora_target_modules", "nothing_proj"], '"lora_target_modules": \'nothing_proj\''),
     (["--freeze_include", '["*nothing_here*"]'], 'freeze pattern "*nothing_here*"')],
    ids=["lora_target_modules", "freeze_include"],
)  # fmt: skip
def test_errors_about_command_line_keys_name_the_command_line(
    tiny_model_dir, shapes_data, tmp_path, override, message
) -> None:
    raw = {"model_name_or_path": str(tiny_model_dir), "output_dir": str(tmp_path / "out"), "device": "cpu",
           "dataset": {"train": [{"name": "chatml_dataset", "data_files": str(shapes_data["train"])}]}}  # fmt: skip
    file = tmp_path / "run.json"
    file.write_text(json.dumps(raw))
    args = arguments.load(file, override)
    with pytest.raises(UserError, match="^command line: ") as err:
        build_model(args, adapter_for(tiny_model_dir))
    assert message in str(err.value) and str(file) not in str(err.value)
    file.write_text(json.dumps({**raw, "freeze_exclude": ["*nothing_in_file*"]}))
    args = arguments.load(file)  # a pattern from the file is still blamed on the file
    with pytest.raises(UserError, match=f'^{file}: freeze pattern "\\*nothing_in_file\\*"'):
        build_model(args, adapter_for(tiny_model_dir))
