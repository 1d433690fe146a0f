"""train.sh's checks before launching (one paragraph, exit code 2, nothing started) and the console it shows:
rank 0's log as written, progress bar in place, Paddle's launch noise dropped, a failed rank's last lines."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from paddlemix.utils.errors import UserError
from paddlemix.utils.launch import LaunchPlan, LogFollower, failure_report, plan_launch

REPO = Path(__file__).resolve().parents[2]
TRAIN_SH = REPO / "paddlemix" / "tools" / "train.sh"
CONFIG = REPO / "paddlemix" / "config" / "tiny" / "sft_argument.json"


def train_sh(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    environ = {**os.environ, "PYTHON": sys.executable, "PYTHONPATH": str(REPO), **env}
    return subprocess.run(["sh", str(TRAIN_SH), *args], cwd=cwd, env=environ, capture_output=True, text=True,
                          timeout=300)  # fmt: skip


def assert_one_paragraph(proc: subprocess.CompletedProcess, *expected: str, lines: int = 3) -> None:
    """Exit code 2, nothing on stdout, and on stderr only the error (one paragraph, or the list of problems)."""
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    paragraph = proc.stderr.strip()
    assert paragraph.startswith("error: ") and len(paragraph.splitlines()) <= lines, proc.stderr
    for text in expected:
        assert text in paragraph, paragraph


def test_missing_and_invalid_argument_files(tmp_path: Path) -> None:
    assert_one_paragraph(train_sh("nope.json", cwd=tmp_path), "argument file nope.json does not exist")
    (tmp_path / "bad.json").write_text('{"output_dir": "out",\n')
    assert_one_paragraph(train_sh("bad.json", cwd=tmp_path), "bad.json is not valid JSON", "line 2")
    assert not list(tmp_path.rglob("launch_logs"))


def test_missing_interpreter_or_paddle(tmp_path: Path) -> None:
    missing = train_sh(str(CONFIG), cwd=tmp_path, PYTHON=str(tmp_path / ".venv" / "bin" / "python"))
    assert_one_paragraph(missing, ".venv/bin/python is not an interpreter", ". .venv/bin/activate")
    # A fresh environment without Paddle (the package itself is found through PYTHONPATH).
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(tmp_path / "bare")], check=True)
    bare = str(tmp_path / "bare" / "bin" / "python")
    assert_one_paragraph(train_sh(str(CONFIG), cwd=tmp_path, PYTHON=bare), "Paddle is not installed in", "PYTHON=")
    no_package = train_sh(str(CONFIG), cwd=tmp_path, PYTHON=bare, PYTHONPATH="")
    assert_one_paragraph(no_package, "the paddlemix package is not installed in", "pip install -e .")


def test_launch_settings_are_checked(tmp_path: Path) -> None:
    assert_one_paragraph(train_sh(str(CONFIG), cwd=tmp_path, NPROC="two"), "NPROC='two' must be a whole number")
    assert_one_paragraph(train_sh(str(CONFIG), cwd=tmp_path, NNODES="2", NODE_RANK="2"), "NODE_RANK=2")


def test_degrees_are_checked_against_the_processes_to_launch(workspace: Path) -> None:
    """The tool's own validation runs with the world size of the launch: 2 processes cannot hold TP 4, and the
    file's other mistakes are listed with it."""
    proc = train_sh(str(CONFIG), "--tensor_parallel_degree", "4", "--lora_rnak", "4", cwd=workspace, NPROC="2")
    assert_one_paragraph(proc, "3 problems, all listed here", lines=4)
    assert "do not divide the 2 launched process(es)" in proc.stderr and 'Did you mean "--lora_rank"' in proc.stderr
    assert not (workspace / "checkpoints").exists()


def test_plan_reads_the_environment(workspace: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(workspace)
    env = {"NPROC": "2", "NNODES": "2", "NODE_RANK": "1", "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "9000"}
    plan = plan_launch([str(CONFIG), "--output_dir", "elsewhere"], env)
    command = plan.command()
    assert command[1:8] == ["-m", "paddle.distributed.launch", "--nproc_per_node", "2", "--nnodes", "2", "--rank"]
    assert command[command.index("--master") + 1] == "10.0.0.1:9000"
    assert plan.log_dir == Path("elsewhere") / "launch_logs" and command[-2:] == ["--output_dir", "elsewhere"]
    with pytest.raises(UserError, match="NODE_RANK=2 must be below NNODES=2"):
        plan_launch([str(CONFIG)], {**env, "NODE_RANK": "2"})


def test_follower_keeps_the_bar_in_place_and_drops_launch_noise(tmp_path: Path) -> None:
    log, out = tmp_path / "workerlog.0", io.BytesIO()
    log.write_bytes(b"an earlier launch into the same folder\n")
    follower = LogFollower(log, out)
    follower.poll()  # nothing new yet
    writes = [
        b"======================= Modified FLAGS detected =======================\n",
        b"FLAGS(name='FLAGS_enable_pir_in_executor', current_value=True, default_value=False)\n",
        b"=======================================================================\n",
        b"I1207 06:12:20.984134 13861 tcp_store.cc:336] create libuv server at port: 44656\n",
        b"[2026-12-07 06:12:33,921] INFO paddlemix.trainer.sft: device cpu, world size 2, seed 42\n",
        b"Train:   0%|  | 0/3",
        b"\rTrain:  33%|# | 1/3W1207 06:12:39.479991 13861 reducer.cc:736] All parameters are involved\n",
        b"\rTrain:  67%|##| 2/3",
        b"\rTrain: 100%|##| 3/3\n",
        b"error: the last line",
    ]
    shown = []
    for chunk in writes:
        with open(log, "ab") as f:
            f.write(chunk)
        follower.poll()
        shown.append(out.getvalue())
    follower.close()
    text = out.getvalue().decode()
    assert text == (
        "[2026-12-07 06:12:33,921] INFO paddlemix.trainer.sft: device cpu, world size 2, seed 42\n"
        "Train:   0%|  | 0/3\rTrain:  33%|# | 1/3\rTrain:  67%|##| 2/3\rTrain: 100%|##| 3/3\nerror: the last line\n"
    )
    assert shown[7].endswith(b"\rTrain:  67%|##| 2/3")  # a bar is shown while it is drawn, not when its line ends


def test_failed_rank_is_named_with_its_last_lines(tmp_path: Path) -> None:
    plan = LaunchPlan("python", "a.json", [], tmp_path, 2)
    (tmp_path / "workerlog.1").write_text("".join(f"line {i}\n" for i in range(30)) + "error: rank 1 broke\n")
    (tmp_path / "launcher.log").write_text(
        "LAUNCH INFO 2026-12-07 Pod failed\nLAUNCH ERROR 2026-12-07 Container failed !!!\nContainer rank 1 status "
        f"failed cmd ['python', '-u', 'x.py'] code 2 log {tmp_path}/workerlog.1\n"
    )
    report = failure_report(plan, 1)
    assert report.startswith(f"rank 1 failed (exit code 2); last lines of {tmp_path}/workerlog.1:")
    assert report.splitlines()[-1] == "  error: rank 1 broke" and "line 10\n" not in report
    (tmp_path / "launcher.log").write_text(json.dumps("no container named") + "\n")
    assert failure_report(plan, 1).startswith(f"the launch failed (exit code 1); last lines of {tmp_path}/launcher")
