"""A shortened run of the video demo: the tiny Qwen2.5-VL must learn which way the square moves (held-out clips),
then answer about one clip through infer.py --video."""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
DEMO = Path(__file__).resolve().parents[2] / "examples" / "video_demo.py"


def test_shortened_video_demo_learns_motion(tmp_path: Path, monkeypatch, run_tool) -> None:
    monkeypatch.setattr(sys, "argv", [str(DEMO)])
    demo = runpy.run_path(str(DEMO))
    accuracy = demo["main"](["--workdir", str(tmp_path), "--n_train", "200", "--n_eval", "40",
                             "--num_train_epochs", "5", "--warmup_ratio", "0.3", "--do_eval", "false",
                             "--evaluation_strategy", "no", "--save_strategy", "no"])  # fmt: skip
    assert accuracy >= 0.9
    config = json.loads(demo["CONFIG"].read_text())
    model = tmp_path / config["output_dir"]
    record = json.loads((tmp_path / "demo_run" / "motion" / "eval.jsonl").read_text().splitlines()[0])
    clip = tmp_path / "demo_run" / "motion" / record["messages"][0]["content"][0]["video"]
    answer = run_tool("infer.py", "--model_name_or_path", str(model), "--video", str(clip), "--question",
                      "Which way does the square move?", cwd=tmp_path).stdout.strip().splitlines()[-1]  # fmt: skip
    assert answer == record["messages"][1]["content"]
