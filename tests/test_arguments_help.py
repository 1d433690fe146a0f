"""`paddlemix-sft --help` lists every key of our argument groups, by group, with the default the checks use."""

from __future__ import annotations

import dataclasses
import re

from paddlemix import arguments
from paddlemix.tools import supervised_finetune


def row(text: str, key: str) -> str:
    match = re.search(rf"^  {re.escape(key)} .*$", text, re.M)
    assert match, f"{key} is not listed"
    return match[0]


def test_help_lists_every_key_by_group_with_its_default(capsys) -> None:
    supervised_finetune.main(["--help"])
    text = capsys.readouterr().out
    assert text.startswith("usage: paddlemix-sft ARGS.json [--key value ...]")
    assert "relative to the working directory" in text and "else to the data file's folder" in text
    headers = [line.split(":")[0] for line in text.splitlines() if re.match(r"^[a-z]+: ", line)]
    assert headers[1:7] == ["model", "data", "lora", "runtime", "preference", "training"]
    for cls in arguments.OWN_GROUPS.values():
        for f in dataclasses.fields(cls):
            if f.name not in arguments.DATA_SPLITS:
                row(text, f.name)
    assert row(text, "max_skip_ratio").split()[-1] == "0.05"
    assert row(text, "lora_rank").split()[-1] == "8"
    assert row(text, "model_name_or_path").split()[-1] == "required"
    assert row(text, "device").split()[1:] == ['"cpu"|"gpu"|"npu"|"xpu"', "|", "None", "not", "set"]
    assert row(text, "do_train").split()[-1] == "true", "our default, not paddleformers' false"
    assert row(text, "per_device_train_batch_size").split()[-1] == "8"
    assert "PaddleMIX's name: mixtoken" in text.split(row(text, "packing"))[1].splitlines()[1]
