"""Video parity with transformers 4.57.1 for Qwen2-VL, Qwen2.5-VL and Qwen3-VL (CPU, float32) on the same frames.

A synthetic clip is sampled and resized by our reader (qwen-vl-utils' rules); the same uint8 frames go to the
reference (hf_video.py). Compared: the training encoder's input ids (video tokens, Qwen3-VL's timestamps),
`pixel_values_videos` (<= 1e-5), `video_grid_thw`, Qwen2.5-VL's `second_per_grid_ts`, the 3-D positions our packing
uses against the model's `get_rope_index`, logits of the model's forward (<= 1e-4), and our float32 linspace frame
indices against `torch.linspace(...).round()`.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import paddle
import pytest
from hf_parity import HERE, LOGITS_ATOL, make_hf_folder, reference_python
from PIL import Image

from paddlemix.auto import AutoModelMIX, AutoProcessorMIX
from paddlemix.datasets.conversation import Message, Sample, VideoRef
from paddlemix.datasets.packing import sample_positions
from paddlemix.models import adapter_for
from paddlemix.processors.chat_template import template_for
from paddlemix.processors.video_sampling import frame_indices
from paddlemix.testing.synthetic_video import moving_square, write_clip

QUESTION, ANSWER = "Which way does the square move?", "left"
PIXEL_ATOL = 1e-5
LINSPACE = [[0, 299, 20], [0, 99, 4], [15, 240, 8], [0, 2999, 768], [0, 3, 3], [0, 5, 3], [7, 1006, 37]]
VIDEO_KEYS = (
    "input_ids",
    "pixel_values",
    "image_grid_thw",
    "pixel_values_videos",
    "video_grid_thw",
    "second_per_grid_ts",
)


@pytest.fixture(scope="module")
def ref_python() -> str:
    return reference_python("hf4")


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # 4.5 s at 8 fps, 72x56: 10 frames sampled at 2 fps from 36, resized up to the 128-token minimum per frame
    frames = moving_square("left", 36, 64)
    return write_clip(tmp_path_factory.mktemp("clip") / "clip.mp4", (f[:56, :72] for f in frames), fps=8)


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("img") / "img.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (84, 56, 3), dtype=np.uint8)).save(path)
    return path


# (tiny folder fixture, with an image before the video): Qwen3-VL's mixed batches take this toolkit's own route
# (paddlemix/models/qwen3_vl_model.py), checked here against the reference too.
CASES = {"qwen2_vl": ("tiny_qwen2_vl_dir", False), "qwen2_5_vl": ("tiny_model_dir", False),
         "qwen3_vl": ("tiny_qwen3_vl_dir", False), "qwen3_vl_image_and_video": ("tiny_qwen3_vl_dir", True)}  # fmt: skip
HF_FOLDERS: dict[str, Path] = {}


@pytest.fixture(scope="module", params=list(CASES))
def compared(request, clip: Path, image: Path, ref_python: str, tmp_path_factory) -> dict:
    """Our encoding, positions and logits, and the reference's, for one family."""
    fixture, with_image = CASES[request.param]
    source = request.getfixturevalue(fixture)
    tmp = tmp_path_factory.mktemp(f"video_{request.param}")
    if fixture not in HF_FOLDERS:
        HF_FOLDERS[fixture] = make_hf_folder(ref_python, source, tmp / "hf")
    model_dir = HF_FOLDERS[fixture]
    processor = AutoProcessorMIX.from_pretrained(model_dir)
    adapter = adapter_for(model_dir)
    encoder = adapter.sample_processor(processor, 8192)
    video = VideoRef(str(clip))
    images = (str(image),) if with_image else ()
    text = "<image>" * with_image + "<video>" + QUESTION
    sample = Sample((Message("user", text), Message("assistant", ANSWER)), images, videos=(video,))
    ours = encoder(sample, template_for(processor))
    frames, plan = encoder.video_reader.load(video)
    np.savez(tmp / "frames.npz", frames=frames)
    request_path = tmp / "request.json"
    request_path.write_text(json.dumps({"frames": str(tmp / "frames.npz"), "indices": list(plan.indices),
                                        "fps": plan.fps, "sample_fps": plan.sample_fps, "question": QUESTION,
                                        "answer": ANSWER, "linspace": LINSPACE, "image": images[0] if images else None}))  # fmt: skip
    proc = subprocess.run([ref_python, str(HERE / "hf_video.py"), str(model_dir), str(request_path),
                           str(tmp / "ref.npz")], capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    ref = dict(np.load(tmp / "ref.npz"))
    config = adapter.load_config(model_dir)
    positions = sample_positions(adapter.position_fn(config), ours)
    model = AutoModelMIX.from_pretrained(model_dir)
    n = len(ours["input_ids"])
    with paddle.no_grad():
        inputs = {k: paddle.to_tensor(ours[k][None] if k == "input_ids" else ours[k]) for k in VIDEO_KEYS if k in ours}
        logits = model(**inputs).logits.numpy()
    return {"ours": ours, "ref": ref, "positions": positions, "logits": logits, "n": n, "family": request.param}


def test_input_ids_match(compared: dict) -> None:
    ours, ref = compared["ours"], compared["ref"]
    hf_ids = ref["input_ids"][0]
    # the reference's template ends the last turn with "<|im_end|>\n"; every shared token must agree
    np.testing.assert_array_equal(ours["input_ids"], hf_ids[: compared["n"]])
    assert len(hf_ids) - compared["n"] <= 1


def test_pixels_grid_and_seconds_match(compared: dict) -> None:
    ours, ref = compared["ours"], compared["ref"]
    np.testing.assert_array_equal(ours["video_grid_thw"], ref["video_grid_thw"])
    diff = np.abs(ours["pixel_values_videos"] - ref["pixel_values_videos"]).max()
    print(f"{compared['family']}: max |pixel_values_videos - HF| = {diff:.2e}")
    assert ours["pixel_values_videos"].shape == ref["pixel_values_videos"].shape and diff <= PIXEL_ATOL
    if "second_per_grid_ts" in ref:
        np.testing.assert_allclose(ours["second_per_grid_ts"], ref["second_per_grid_ts"], rtol=1e-6)
    else:
        assert "second_per_grid_ts" not in ours


def test_positions_match(compared: dict) -> None:
    n = compared["n"]
    np.testing.assert_array_equal(compared["positions"], compared["ref"]["position_ids"][:, 0, :n])


def test_logits_match(compared: dict) -> None:
    n = compared["n"]
    diff = np.abs(compared["logits"][0] - compared["ref"]["logits"][0, :n]).max()
    print(f"{compared['family']}: max |logits - HF logits| = {diff:.2e}")
    assert diff <= LOGITS_ATOL


def test_frame_indices_match_torch_linspace(compared: dict) -> None:
    for k, (first, last, n) in enumerate(LINSPACE):
        assert frame_indices(first, last, n) == compared["ref"][f"linspace_{k}"].tolist(), (first, last, n)
