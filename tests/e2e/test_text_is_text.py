"""Through the real tools: check_data counts records that type special-token text and shows (`--show`) and dumps
(`--dump`) what trains; the code/SVG/HTML records of the report and thin images train without a skip."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from paddlemix.processors.sample_processor import IGNORE_INDEX
from paddlemix.testing.text_records import code_records

pytestmark = pytest.mark.slow
CONFIG = Path(__file__).resolve().parents[2] / "paddlemix" / "config" / "tiny" / "sft_argument.json"
SHORT = ["--do_eval", "false", "--evaluation_strategy", "no", "--max_length", "512"]


def write_records(folder: Path) -> tuple[Path, list[dict]]:
    """The five code/SVG/HTML records, a ChatML lesson typing `<|im_end|>`, and thin text-line crops."""
    folder.mkdir()
    image = folder / "a.png"
    Image.new("RGB", (56, 56), (220, 20, 20)).save(image)
    records = code_records(str(image))
    records.append({"messages": [{"role": "user", "content": "How does ChatML end a turn?"},
                                 {"role": "assistant", "content": "With <|im_end|> after the text."}]})  # fmt: skip
    for w, h in [(332, 27), (800, 20), (27, 29)]:
        Image.new("RGB", (w, h), (20, 20, 220)).save(folder / f"line_{w}x{h}.png")
        records.append({"images": [f"line_{w}x{h}.png"], "messages": [
            {"role": "user", "content": "<image>Color?"}, {"role": "assistant", "content": "blue"}]})  # fmt: skip
    path = folder / "text.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    return path, records


def test_check_data_show_dump_and_training(workspace: Path, run_tool) -> None:
    path, records = write_records(workspace / "text")
    dataset = json.dumps({"train": [{"name": "chatml_dataset", "data_files": str(path)}]})
    args = [str(CONFIG), *SHORT, "--dataset", dataset]
    proc = run_tool("check_data.py", *args, "--report", "report.json", "--show", "2", "--dump", "dump.jsonl",
                    cwd=workspace, timeout=300)  # fmt: skip
    source = json.loads((workspace / "report.json").read_text())["splits"]["train"]["sources"][
        "chatml_dataset:text.jsonl"
    ]
    assert source["skipped"] == 0 and source["usable"] == len(records) == 9
    assert source["special_token_text"]["records"] == 1
    assert source["special_token_text"]["strings"] == {"<|im_end|>": 1}
    assert "1 records type special-token text (<|im_end|> x1), encoded as plain text" in proc.stdout
    assert (proc.stdout + proc.stderr).count("stays text, as in every such record") == 1  # once per file
    shown = proc.stdout.split("--- chatml_dataset:text.jsonl record #")
    assert len(shown) == 3  # --show 2
    assert "[[It marks where <image> features are inserted.<|im_end|>]]" in shown[1]
    dumped = [json.loads(line) for line in (workspace / "dump.jsonl").read_text().splitlines()]
    assert [d["index"] for d in dumped] == [0, 1]
    first = dumped[0]
    assert len(first["labels"]) == len(first["input_ids"]) == len(first["position_ids"][0])
    assert all(label in (IGNORE_INDEX, token) for label, token in zip(first["labels"], first["input_ids"]))
    assert first["image_grid_thw"] == [] and first["source"] == "chatml_dataset:text.jsonl"

    run_tool("supervised_finetune.py", *args, "--max_steps", "3", "--per_device_train_batch_size", "3",
             "--save_steps", "100", cwd=workspace, timeout=600)  # fmt: skip
    out = workspace / "checkpoints" / "tiny_sft"
    skipped = out / "skipped_samples.jsonl"
    assert not skipped.exists() or not skipped.read_text().strip()
    assert json.loads((out / "all_results.json").read_text())["skipped_samples"] == 0
