"""What a run leaves for people to read: logged statistics, VisualDL and TensorBoard events, curve, summary."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

pytestmark = pytest.mark.slow
CONFIG = Path(__file__).resolve().parents[2] / "paddlemix" / "config" / "tiny" / "sft_argument.json"


def test_run_writes_logs_events_curve_and_summary(workspace: Path, run_tool) -> None:
    proc = run_tool("supervised_finetune.py", str(CONFIG), "--report_to", '["visualdl", "tensorboard"]',
                    "--max_steps", "4", "--eval_steps", "2", cwd=workspace)  # fmt: skip
    out = workspace / "checkpoints" / "tiny_sft"
    records = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    step = next(r for r in records if "loss" in r)
    for key in ("loss", "learning_rate", "grad_norm", "text_tokens_per_sec", "image_tokens_per_sec", "fill",
                "skipped", "peak_memory_mb"):  # fmt: skip
        assert key in step, key
    assert any(out.rglob("vdlrecords*")), "VisualDL events"
    assert any(out.rglob("events.out.tfevents*")), "TensorBoard events"
    with Image.open(out / "loss_curve.png") as image:
        assert image.format == "PNG"
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["steps"] == 4 and summary["final_train_loss"] > 0 and summary["final_eval_loss"] > 0
    assert all(r["grad_norm"] > 0 for r in records if "loss" in r)
    assert "TrainProcess" in proc.stderr and "it/s" in proc.stderr  # the progress bar with its rate and ETA
