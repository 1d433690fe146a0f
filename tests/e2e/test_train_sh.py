"""train.sh's console for 40 steps in 2 processes: rank 0's output only, the progress bar updated in place, the
launcher's own output in its log file; under 40 lines where Paddle's launcher printed 121 plus its settings."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.multiprocess]
REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "paddlemix" / "config" / "tiny" / "sft_argument.json"


def test_two_processes_40_steps_console_under_40_lines(workspace: Path) -> None:
    env = {**os.environ, "NPROC": "2", "PYTHON": sys.executable}
    args = ["--max_steps", "40", "--eval_steps", "20", "--save_steps", "20", "--output_dir", "dp"]
    proc = subprocess.run(["sh", str(REPO / "paddlemix" / "tools" / "train.sh"), str(CONFIG), *args], cwd=workspace,
                          env=env, capture_output=True, timeout=900)  # fmt: skip
    logs = workspace / "dp" / "launch_logs"
    console = (proc.stdout + proc.stderr).decode()  # bytes: text mode would turn each "\r" into a line end
    assert proc.returncode == 0, console[-3000:]
    lines = console.rstrip("\n").split("\n")  # as a terminal shows them: a "\r" redraws the same line
    assert len(lines) < 40, console
    assert lines[0].startswith(f"+ {sys.executable} -m paddle.distributed.launch --nproc_per_node 2 --log_dir")
    # The bar is redrawn with carriage returns on one console line, as a terminal shows it, up to 40/40.
    bar_lines = [line for line in lines if "TrainProcess" in line]
    assert len(bar_lines) <= 4 and console.count("\r") >= 40 and "40/40" in console
    for noise in ("LAUNCH INFO", "ccache", "Modified FLAGS", "Traceback", "reducer.cc", "parallel environment"):
        assert noise not in console, noise
    assert not re.search(r"^[IW]\d{4} ", console, re.M), "Paddle's C++ log lines stay in the worker logs"
    assert "LAUNCH INFO" in (logs / "launcher.log").read_text()
    assert sorted(p.name for p in logs.glob("workerlog.*")) == ["workerlog.0", "workerlog.1"]
    assert (workspace / "dp" / "model.safetensors").is_file()
