"""A shortened run of the README's demo: the tiny model must really learn the colour task."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
DEMO = Path(__file__).resolve().parents[2] / "examples" / "shapes_demo.py"


def test_shortened_demo_learns_colours(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(sys, "argv", [str(DEMO)])
    main = runpy.run_path(str(DEMO))["main"]
    accuracy = main(["--workdir", str(tmp_path), "--n_train", "320", "--n_eval", "40", "--num_train_epochs", "3"])
    assert accuracy >= 0.9
    assert (tmp_path / "demo_run" / "checkpoints" / "shapes_sft" / "model.safetensors").is_file()
