"""Shared fixtures: a tiny Qwen2.5-VL folder and a synthetic shapes data set, built once per test session."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from paddlemix.testing.shapes import make_shapes_dataset
from paddlemix.testing.tiny_model import build_tiny_qwen2_5_vl


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_qwen2_5_vl(tmp_path_factory.mktemp("tiny_qwen2_5_vl"))


@pytest.fixture(scope="session")
def shapes_data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_shapes_dataset(tmp_path_factory.mktemp("shapes"), n_train=32, n_eval=8, seed=0)


REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "paddlemix" / "config"


@pytest.fixture()
def workspace(tmp_path: Path, tiny_model_dir: Path, shapes_data: dict[str, Path]) -> Path:
    """A working folder laid out as config/tiny/*.json expect: ./tiny_qwen2_5_vl and ./shapes."""
    (tmp_path / "tiny_qwen2_5_vl").symlink_to(tiny_model_dir)
    (tmp_path / "shapes").symlink_to(shapes_data["train"].parent)
    return tmp_path


def _run_tool(tool: str, *args: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, str(REPO / "paddlemix" / "tools" / tool), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=900,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"{tool} exited {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return proc


@pytest.fixture()
def run_tool():
    """Run `paddlemix/tools/<tool>` as a user would, in a fresh interpreter: run_tool(tool, *args, cwd=...)."""
    return _run_tool
