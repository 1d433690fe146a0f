"""A data set in the shapes of the field (typed content lists, loss flags, {bytes, path} dicts, data URIs, URLs,
BOM files, one-object JSON, Parquet, EXIF photos, 16-bit and animated images, an oversized header) trains through
the real tool with exactly the expected records skipped, and check_data reaches the same verdict per record."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from paddlemix.testing.wild_data import image_server, make_wild_dataset

pytestmark = pytest.mark.slow
CONFIG = Path(__file__).resolve().parents[2] / "paddlemix" / "config" / "tiny" / "sft_argument.json"


def verdicts(records: list[dict]) -> set[tuple[str, int]]:
    return {(Path(r["file"]).name, r["index"]) for r in records}


def test_wild_data_trains_and_check_data_agrees(workspace: Path, shapes_data, run_tool) -> None:
    good = sorted((shapes_data["train"].parent / "images").glob("train_*.png"))
    ok_png = good[0].read_bytes()
    with image_server({"/ok.png": ok_png}) as base_url:
        sources, expected = make_wild_dataset(workspace / "wild", good, base_url)
        args = [str(CONFIG), "--dataset", json.dumps({"train": sources}), "--do_eval", "false",
                "--evaluation_strategy", "no", "--image_cache_dir", str(workspace / "image_cache"),
                "--max_skip_ratio", "0.5", "--per_device_train_batch_size", "4"]  # fmt: skip
        run_tool("check_data.py", *args, "--report", "report.json", cwd=workspace, timeout=300)
        report = json.loads((workspace / "report.json").read_text())["splits"]["train"]
        checked = [r for source in report["sources"].values() for r in source["skipped_records"]]
        run_tool("supervised_finetune.py", *args, "--max_steps", "-1", "--num_train_epochs", "1",
                 "--save_steps", "100", cwd=workspace, timeout=600)  # fmt: skip
    out = workspace / "checkpoints" / "tiny_sft"
    trained = [json.loads(line) for line in (out / "skipped_samples.jsonl").read_text().splitlines()]
    assert verdicts(trained) == expected
    assert verdicts(checked) == expected
    reasons = {(Path(r["file"]).name, r["index"]): r["reason"] for r in trained}
    assert reasons[("chatml.jsonl", 5)].startswith("image URL could not be fetched")
    assert reasons[("chatml.jsonl", 8)].startswith("image too large (20000x20000)")
    assert reasons[("chatml.jsonl", 9)].startswith("<image> in an assistant turn")
    assert reasons[("chatml.jsonl", 10)].startswith("conversation starts with an assistant turn")
    assert "loss" in reasons[("chatml.jsonl", 12)]
    assert reasons[("data.parquet", 2)].startswith("image cannot be decoded: bytes of b.png")
    assert report["usable"] == 15 + 1 + 3 + 1 + 3 - len(expected)
    assert (out / "model.safetensors").is_file()
    assert len(list((workspace / "image_cache").rglob("*"))) == 2  # the fetched URL (and its hash folder)
