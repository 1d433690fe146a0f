"""paddlemix-eval's command line: mistakes end in one readable paragraph (exit code 2), never a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from paddlemix.testing.server import free_port

REPO = Path(__file__).resolve().parents[2]
pytest.importorskip("sacrebleu", reason="the eval extra (sacrebleu, rouge-score, rapidfuzz) is not installed")


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "paddlemix/tools/evaluate.py"), *args], capture_output=True,
                          text=True, timeout=300)  # fmt: skip


@pytest.mark.parametrize(
    "args, key",
    [(["--data_file", "x.jsonl", "--output_dir", "o"], "--model_name_or_path"),
     (["--server_url", "http://127.0.0.1:1/v1", "--data_file", "/nonexistent.jsonl", "--output_dir", "o"],
      "--data_file"),
     (["--server_url", "http://127.0.0.1:1/v1", "--data_file", "x", "--output_dir", "o", "--batch_size", "0"],
      "--batch_size")],
)  # fmt: skip
def test_mistakes_are_one_paragraph(args: list[str], key: str) -> None:
    proc = run(*args)
    assert proc.returncode == 2 and key in proc.stderr and "Traceback" not in proc.stderr


def test_an_unreachable_server_is_named(shapes_data: dict[str, Path], tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"
    proc = run("--server_url", url, "--data_file", str(shapes_data["eval"]), "--output_dir", str(tmp_path / "o"))
    assert proc.returncode == 2 and f"--server_url {url}" in proc.stderr and "Traceback" not in proc.stderr
