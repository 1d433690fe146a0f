"""Videos encoded by the Qwen-VL families: token counts from headers equal those of decoded frames, grids and patches
agree, Qwen2.5-VL's seconds per temporal patch, Qwen3-VL's timestamps, images and videos in one sample, LLaVA
refusing video records with a reason."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from paddlemix.auto import AutoProcessorMIX
from paddlemix.datasets.conversation import Message, Sample, SampleError, VideoRef
from paddlemix.datasets.packing import build_pack
from paddlemix.models import adapter_for
from paddlemix.processors.chat_template import template_for
from paddlemix.processors.video_sampling import VideoOptions
from paddlemix.testing.synthetic_video import moving_square, write_clip


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_clip(tmp_path_factory.mktemp("clips") / "left.mp4", moving_square("left", 30, 64), fps=10)


def encoder_of(model_dir: Path, max_length: int = 4096):
    processor = AutoProcessorMIX.from_pretrained(model_dir)
    adapter = adapter_for(model_dir)
    return adapter.sample_processor(processor, max_length), template_for(processor), processor.tokenizer, adapter


def video_sample(*videos: VideoRef, images: tuple[str, ...] = (), text: str = "<video>Which way?") -> Sample:
    return Sample((Message("user", text), Message("assistant", "left")), images, videos=videos)


@pytest.mark.parametrize("family", ["tiny_model_dir", "tiny_qwen2_vl_dir", "tiny_qwen3_vl_dir"])
def test_header_length_equals_decoded_length(request: pytest.FixtureRequest, clip: Path, family: str) -> None:
    encoder, template, tokenizer, _ = encoder_of(request.getfixturevalue(family))
    sample = video_sample(VideoRef(str(clip)))
    out = encoder(sample, template)
    assert encoder.length(sample, template) == len(out["input_ids"])
    (t, h, w) = out["video_grid_thw"][0]
    assert t == 3  # 3 s at 2 fps -> 6 frames -> 3 temporal patches
    assert out["pixel_values_videos"].shape[0] == t * h * w
    video_id = tokenizer.convert_tokens_to_ids("<|video_pad|>")
    assert int((out["input_ids"] == video_id).sum()) == t * h * w // 4
    assert (out["labels"][out["input_ids"] == video_id] == -100).all()


def test_qwen2_5_vl_seconds_per_temporal_patch(tiny_model_dir: Path, clip: Path) -> None:
    encoder, template, _, _ = encoder_of(tiny_model_dir)
    videos = VideoRef(str(clip)), VideoRef(str(clip), VideoOptions(fps=1.0))
    out = encoder(video_sample(*videos, text="<video><video>Which way?"), template)
    # temporal_patch_size / sample fps; at fps 1 a 3 s clip still gets min_frames 4: 4 frames in 3 s
    np.testing.assert_allclose(out["second_per_grid_ts"], [2 / 2.0, 2 / (4 / 3)], rtol=1e-6)


def test_qwen3_vl_writes_timestamps(tiny_qwen3_vl_dir: Path, clip: Path) -> None:
    encoder, template, tokenizer, _ = encoder_of(tiny_qwen3_vl_dir)
    out = encoder(video_sample(VideoRef(str(clip))), template)
    text = tokenizer.decode(out["input_ids"])
    # frames 0, 6, 12, 17, 23, 29 of 30 at 10 fps: patch times (0 + 0.6) / 2, (1.2 + 1.7) / 2, (2.3 + 2.9) / 2
    assert [text.count(f"<{t} seconds><|vision_start|>") for t in ("0.3", "1.4", "2.6")] == [1, 1, 1]
    assert "second_per_grid_ts" not in out


def test_images_and_videos_in_one_sample_and_pack(tiny_model_dir: Path, clip: Path, tmp_path: Path) -> None:
    encoder, template, _, adapter = encoder_of(tiny_model_dir)
    Image.new("RGB", (56, 56), (200, 10, 10)).save(tmp_path / "a.png")
    sample = video_sample(VideoRef(str(clip)), images=(str(tmp_path / "a.png"),), text="<image>and<video>?")
    out = encoder(sample, template)
    assert {"pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw"} <= set(out)
    config = adapter.load_config(tiny_model_dir)
    pack = build_pack([out, out], adapter.position_fn(config))
    n = len(out["input_ids"])
    np.testing.assert_array_equal(pack["position_ids"][:, :n], pack["position_ids"][:, n:])  # restart per sample
    assert len(pack["video_grid_thw"]) == 2 and len(pack["pixel_values_videos"]) == 2 * len(out["pixel_values_videos"])


def test_frame_list_is_padded_to_even(tiny_model_dir: Path, tmp_path: Path) -> None:
    encoder, template, _, _ = encoder_of(tiny_model_dir)
    frames = []
    for k, frame in enumerate(moving_square("right", 3, 56)):
        Image.fromarray(frame).save(tmp_path / f"f{k}.png")
        frames.append(str(tmp_path / f"f{k}.png"))
    out = encoder(video_sample(VideoRef(tuple(frames))), template)
    # 3 frames -> 4 -> 2 temporal patches; 56x56 by the image rule, then 336x336 by the video budget (128 f^2)
    assert out["video_grid_thw"].tolist() == [[2, 24, 24]]
    last = out["pixel_values_videos"][-576:].reshape(576, 3, 2, -1)  # the last temporal patch: frame 2 twice
    np.testing.assert_array_equal(last[:, :, 0], last[:, :, 1])
    first = out["pixel_values_videos"][:576].reshape(576, 3, 2, -1)
    assert not np.array_equal(first[:, :, 0], first[:, :, 1])


def test_llava_refuses_video_records(tiny_llava_dir: Path, clip: Path) -> None:
    encoder, template, _, _ = encoder_of(tiny_llava_dir)
    with pytest.raises(SampleError, match="llava models here take images only"):
        encoder.length(video_sample(VideoRef(str(clip))), template)


def test_check_data_reports_frames_tokens_and_skips(tiny_model_dir: Path, clip: Path, tmp_path: Path) -> None:
    import json

    from paddlemix.arguments import DatasetSource
    from paddlemix.datasets.checks import check_source, format_report

    def record(video: str) -> dict:
        return {"videos": [video], "messages": [{"role": "user", "content": "<video>Which way?"},
                                                {"role": "assistant", "content": "left"}]}  # fmt: skip

    (tmp_path / "d.jsonl").write_text("".join(json.dumps(record(v)) + "\n" for v in (str(clip), "gone.mp4")))
    encoder, template, _, _ = encoder_of(tiny_model_dir)
    source = DatasetSource(name="chatml_dataset", data_files=[str(tmp_path / "d.jsonl")])
    report, lengths = check_source(source, encoder, template)
    assert report["skip_reasons"] == {"video not found": 1}
    (entry,) = report["video_records"]
    assert (entry["index"], entry["frames"], entry["video_tokens"]) == (
        0,
        6,
        3 * 24 * 24 // 4,
    )  # 64 px up to 336 px, 14-px patches
    text = format_report({"splits": {"train": {**report, "usable": 1, "sources": {"s": report}}}, "max_length": 1})
    assert "1 records with video: frames min 6" in text


def test_training_and_inference_encode_a_video_sample_alike(tiny_qwen3_vl_dir: Path, clip: Path) -> None:
    from paddlemix.processors.template_check import encoding_mismatch

    encoder, template, _, _ = encoder_of(tiny_qwen3_vl_dir)
    assert encoding_mismatch(encoder, template, video_sample(VideoRef(str(clip)))) is None
