"""A model folder is input only: training, inference and the data check read it, on a read-only mount, and leave
every file as it was; pickles planted in it never run."""

from __future__ import annotations

import hashlib
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "paddlemix" / "config" / "tiny" / "sft_argument.json"


class PlantedPayload:
    """Unpickling this creates the file `marker`."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


def digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def can_mount_read_only(folder: Path) -> bool:
    command = f"mount --bind {folder} {folder} && mount -o remount,ro,bind {folder} {folder} && ! touch {folder}/x"
    return bool(shutil.which("unshare")) and subprocess.run(["unshare", "-m", "sh", "-c", command]).returncode == 0


def run_on(folder: Path, read_only: bool, tool: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run a tool as a user would; with `read_only`, inside a mount namespace where `folder` is mounted read-only."""
    command = [sys.executable, str(REPO / "paddlemix" / "tools" / tool), *args]
    if read_only:
        mount = f"mount --bind {folder} {folder} && mount -o remount,ro,bind {folder} {folder}"
        command = ["unshare", "-m", "sh", "-c", f'{mount} && exec "$0" "$@"', *command]
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.run(command, cwd=cwd, capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, f"{tool}\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return proc


def test_train_infer_and_check_leave_the_model_folder_untouched(workspace: Path) -> None:
    model = workspace / "model"
    shutil.copytree(workspace / "tiny_qwen2_5_vl", model)
    marker = workspace / "code_ran"
    payload = pickle.dumps({"state": PlantedPayload(marker)})
    for name in ("notes.metadata", "flex-ckpt.auto_generated.metadata", "model_state.pdparams", "pytorch_model.bin"):
        (model / name).write_bytes(payload)
    before = digest(model)
    read_only = can_mount_read_only(model)
    overrides = ["--model_name_or_path", str(model), "--max_steps", "2", "--do_eval", "false"]
    run_on(model, read_only, "supervised_finetune.py", str(CONFIG), *overrides, cwd=workspace)
    assert (workspace / "checkpoints" / "tiny_sft" / "model.safetensors").is_file()
    run_on(model, read_only, "check_data.py", str(CONFIG), *overrides, cwd=workspace)
    image = sorted((workspace / "shapes" / "images").glob("*.png"))[0]
    answer = run_on(model, read_only, "infer.py", "--model_name_or_path", str(model), "--image", str(image),
                    "--question", "What color is the shape?", "--max_new_tokens", "3", cwd=workspace)  # fmt: skip
    assert "Using download source" not in answer.stderr
    assert not marker.exists()
    assert digest(model) == before
    if not read_only:
        pytest.skip("ran with a writable folder: a read-only bind mount (unshare -m) is not permitted here")
