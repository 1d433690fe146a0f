"""Every argument file shipped under paddlemix/config/ parses and validates (paths pointed at tiny stand-ins)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from paddlemix import arguments

CONFIG = Path(__file__).resolve().parents[1] / "paddlemix" / "config"
FILES = sorted(CONFIG.rglob("*_argument.json"))


def test_configs_exist() -> None:
    assert {p.parent.name for p in FILES} >= {
        "tiny",
        "demo",
        "qwen2_vl",
        "qwen2_5_vl",
        "qwen3_vl",
        "llava",
        "paddleocr_vl",
    }


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(CONFIG)))
def test_config_validates(path: Path, tiny_model_dir: Path, shapes_data: dict, tmp_path: Path) -> None:
    raw = json.loads(path.read_text())
    raw["model_name_or_path"] = str(tiny_model_dir)
    raw["output_dir"] = str(tmp_path / "out")
    for split in raw.get("dataset", {}).values():
        for source in split:
            source["data_files"] = str(shapes_data["train"])
    if "meta_path" in raw:  # PaddleMIX's data meta file: the same entries, each pointed at the tiny data
        meta = json.loads((CONFIG.parents[1] / raw["meta_path"]).read_text())
        for entry in meta.values():
            entry.update(root=str(tmp_path), annotation=str(shapes_data["train"]))
        raw["meta_path"] = str(tmp_path / "meta.json")
        Path(raw["meta_path"]).write_text(json.dumps(meta))
    args = arguments.parse(raw, str(path), set())
    assert args.data.train and args.training.output_dir == str(tmp_path / "out")
    if (
        raw.get("bf16") and args.training.device == "cpu"
    ):  # on CPU the files run as shipped, in float32, with one line saying so
        assert args.training.bf16 is False and [n for n in args.notes if n.startswith("precision: ")] == [
            f"precision: float32, not bf16 {raw['fp16_opt_level']}: {arguments.CPU_HALF_PRECISION.format(kind='bfloat16')}"
        ]
