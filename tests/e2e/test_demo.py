"""A shortened run of the README's demo: the tiny model must really learn the colour task."""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
DEMO = Path(__file__).resolve().parents[2] / "examples" / "shapes_demo.py"


def test_shortened_demo_learns_colours(tmp_path: Path, monkeypatch, run_tool) -> None:
    monkeypatch.setattr(sys, "argv", [str(DEMO)])
    main = runpy.run_path(str(DEMO))["main"]
    accuracy = main(["--workdir", str(tmp_path), "--n_train", "320", "--n_eval", "40", "--num_train_epochs", "3"])
    assert accuracy >= 0.9
    model = tmp_path / "demo_run" / "checkpoints" / "shapes_sft"
    assert (model / "model.safetensors").is_file()
    record = json.loads((tmp_path / "demo_run" / "shapes" / "eval.jsonl").read_text().splitlines()[0])
    image = tmp_path / "demo_run" / "shapes" / record["images"][0]
    question = record["messages"][0]["content"].replace("<image>", "")
    answer = run_tool("infer.py", "--model_name_or_path", str(model), "--image", str(image), "--question", question,
                      cwd=tmp_path).stdout.strip().splitlines()[-1]  # fmt: skip
    assert answer == record["messages"][1]["content"]
    log = [json.loads(line) for line in (model / "train_log.jsonl").read_text().splitlines()]
    during = [r["eval_accuracy"] for r in log if "eval_accuracy" in r]
    assert len(during) >= 3 and during[-1] >= 0.9 and during[-1] > during[0], during
