"""Shared fixtures: tiny Qwen2-VL, Qwen2.5-VL, Qwen3-VL, PaddleOCR-VL and LLaVA (with its CLIP and LM parts) folders and a synthetic shapes
data set, built once per session."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from paddlemix.testing.shapes import make_shapes_dataset
from paddlemix.testing.tiny_llava import build_tiny_causal_lm, build_tiny_clip_vision
from paddlemix.testing.tiny_model import build_tiny_qwen2_5_vl
from paddlemix.testing.tiny_paddleocr_vl import build_tiny_paddleocr_vl
from paddlemix.testing.tiny_qwen2_vl import build_tiny_qwen2_vl
from paddlemix.testing.tiny_qwen3_vl import build_tiny_qwen3_vl


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_qwen2_5_vl(tmp_path_factory.mktemp("tiny_qwen2_5_vl"))


@pytest.fixture(scope="session")
def tiny_qwen2_vl_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_qwen2_vl(tmp_path_factory.mktemp("tiny_qwen2_vl"))


@pytest.fixture(scope="session")
def tiny_qwen3_vl_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_qwen3_vl(tmp_path_factory.mktemp("tiny_qwen3_vl"))


@pytest.fixture(scope="session")
def tiny_paddleocr_vl_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_paddleocr_vl(tmp_path_factory.mktemp("tiny_paddleocr_vl"))


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_clip_vision(tmp_path_factory.mktemp("tiny_clip"))


@pytest.fixture(scope="session")
def tiny_qwen2_lm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_causal_lm(tmp_path_factory.mktemp("tiny_qwen2_lm"), "qwen2")


@pytest.fixture(scope="session")
def tiny_llava_dir(tmp_path_factory: pytest.TempPathFactory, tiny_clip_dir: Path, tiny_qwen2_lm_dir: Path) -> Path:
    """A LLaVA folder built by `build_llava` from the tiny CLIP tower and the tiny Qwen2 LM."""
    from paddlemix.models.llava.build import build_llava

    return build_llava(tiny_clip_dir, tiny_qwen2_lm_dir, tmp_path_factory.mktemp("tiny_llava"))


@pytest.fixture()
def hf_llava_files():
    """hf_llava_files(command, *args) -> dict: run tests/parity/hf_llava_files.py with transformers 4.57 (skips the
    test when PADDLEMIX_REF_PYTHON is not set)."""
    ref_python = os.environ.get("PADDLEMIX_REF_PYTHON")
    if not ref_python:
        pytest.skip("PADDLEMIX_REF_PYTHON (a Python with torch + transformers 4.57.1) is not set")

    def run(command: str, *args: str | Path) -> dict:
        script = REPO / "tests" / "parity" / "hf_llava_files.py"
        proc = subprocess.run([ref_python, str(script), command, *map(str, args)], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr[-4000:]
        return json.loads(proc.stdout.strip().splitlines()[-1])

    return run


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


LONG_ANSWER = (
    "The shape in the picture is drawn in one flat colour on a plain background, and after looking at it closely "
    "I would say that its colour is {} without any doubt at all."
)


@pytest.fixture()
def uneven_answers(workspace: Path, shapes_data: dict[str, Path]) -> Path:
    """8 shapes records (absolute image paths) whose answers alternate between one word and a long sentence
    (about 4 vs 45 labelled tokens): per-micro-batch loss means weigh them differently from the batch's token mean."""
    shapes = shapes_data["train"]
    records = [json.loads(line) for line in shapes.read_text().splitlines()[:8]]
    for i, r in enumerate(records):
        r["images"] = [str(shapes.parent / p) for p in r["images"]]
        if i % 2:
            r["messages"][1]["content"] = LONG_ANSWER.format(r["messages"][1]["content"])
    path = workspace / "uneven.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


# model_type -> session fixture
TINY_DIRS = {
    "qwen2_vl": "tiny_qwen2_vl_dir",
    "qwen2_5_vl": "tiny_model_dir",
    "qwen3_vl": "tiny_qwen3_vl_dir",
    "llava": "tiny_llava_dir",
    "paddleocr_vl": "tiny_paddleocr_vl_dir",
}


@pytest.fixture()
def tiny_family(request: pytest.FixtureRequest, workspace: Path) -> str:
    """Parametrise indirectly with a model_type: that family's tiny model is linked into the workspace as
    ./tiny_<model_type>; returns the folder name, for `--model_name_or_path`."""
    name = f"tiny_{request.param}"
    if not (workspace / name).exists():
        (workspace / name).symlink_to(request.getfixturevalue(TINY_DIRS[request.param]))
    return name


def _run_tool(
    tool: str, *args: str, cwd: Path, check: bool = True, timeout: float = 900
) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, str(REPO / "paddlemix" / "tools" / tool), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"{tool} exited {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return proc


@pytest.fixture()
def run_tool():
    """Run `paddlemix/tools/<tool>` as a user would, in a fresh interpreter: run_tool(tool, *args, cwd=...)."""
    return _run_tool


def _kill_when(tool: str, *args: str, cwd: Path, marker: Path, timeout: float = 600) -> int:
    """Start a tool, `kill -9` it as soon as `marker` exists, and return its exit code (-9 when killed)."""
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "paddlemix" / "tools" / tool), *args],
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + timeout
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    return proc.wait()


@pytest.fixture()
def kill_when():
    """kill_when(tool, *args, cwd=..., marker=...): run a tool and SIGKILL it once `marker` appears."""
    return _kill_when


PLANTED = {  # record index in faulty.jsonl -> the skip reason it must produce
    1: "image not found",
    2: "image cannot be decoded",
    3: "image cannot be decoded",
    4: "image too large",
    5: "image aspect ratio over 200",
    6: 'neither "messages" nor "conversations"',
    7: "no assistant turn",
    8: "2 <image> placeholders but 1 images",
    9: "malformed JSON line",
    10: "exceed max_length",
}


def png_header(width: int, height: int) -> bytes:
    """A width x height RGB PNG whose pixel data is missing: what a decompression bomb shows before it is decoded."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    return b"\x89PNG\r\n\x1a\n" + header + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


@pytest.fixture(scope="session")
def faulty_data(tmp_path_factory: pytest.TempPathFactory, shapes_data: dict[str, Path]) -> Path:
    """A chatml file whose records 1-10 each carry one planted fault (see PLANTED); the others are good."""
    from PIL import Image

    folder = tmp_path_factory.mktemp("faulty")
    good = sorted((shapes_data["train"].parent / "images").glob("train_*.png"))
    (folder / "random.png").write_bytes(bytes(range(256)) * 4)
    (folder / "truncated.png").write_bytes(good[0].read_bytes()[: good[0].stat().st_size // 2])
    (folder / "bomb.png").write_bytes(png_header(30000, 30000))
    Image.new("RGB", (28, 6000), (255, 0, 0)).save(folder / "thin.png")

    def chat(image: str, question: str = "<image>What color is it?", answer: str = "red") -> str:
        return json.dumps({"images": [image], "messages": [{"role": "user", "content": question},
                                                           {"role": "assistant", "content": answer}]})  # fmt: skip

    lines = [chat(str(good[0])), chat("missing.png"), chat("random.png"), chat("truncated.png"), chat("bomb.png"),
             chat("thin.png"), json.dumps({"text": "no conversation"}), chat(str(good[1]), answer=""),
             chat(str(good[2]), question="<image><image>Which?"), '{"messages": [broken',
             chat(str(good[3]), question="<image>" + "word " * 400)]  # fmt: skip
    lines += [chat(str(p)) for p in good[4:30]]
    path = folder / "faulty.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path
