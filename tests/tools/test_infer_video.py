"""infer.py answers about a video (--video) and about video records of --data_file, sampling as training does
(the training's video settings from run_args.json); a missing --video fails before the model loads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from paddlemix.datasets.conversation import VIDEO_PLACEHOLDER, VideoRef, plain_text
from paddlemix.inference.generation import question_message
from paddlemix.testing.synthetic_video import moving_square, write_clip
from paddlemix.tools.infer import media_named, parse, too_long_hint, training_data_settings


def test_infer_reads_the_training_video_settings(tmp_path: Path) -> None:
    (tmp_path / "run_args.json").write_text(
        json.dumps({"video_fps": 1.0, "video_maxlen": 8, "video_resolution": None})
    )
    args = parse(["--model_name_or_path", "m", "--lora_path", str(tmp_path), "--question", "q"])
    assert training_data_settings(args) == {"image_resolution": None, "split_special_tokens": True,
                                            "video_fps": 1.0, "video_maxlen": 8}  # fmt: skip


def test_video_flags_replace_the_training_values(tmp_path: Path) -> None:
    (tmp_path / "run_args.json").write_text(json.dumps({"video_fps": 1.0, "video_maxlen": 8}))
    args = parse(["--model_name_or_path", str(tmp_path), "--question", "q", "--video_maxlen", "4",
                  "--video_max_pixels", "3136", "--max_video_seconds", "60"])  # fmt: skip
    settings = training_data_settings(args)
    assert (settings["video_fps"], settings["video_maxlen"], settings["video_max_pixels"]) == (1.0, 4, 3136)
    assert settings["max_video_seconds"] == 60.0


def test_hints_name_the_video_settings_for_videos() -> None:
    hint = too_long_hint([], ["c.mp4"])
    assert "--video_maxlen" in hint and "--video_max_pixels" in hint and "--image" not in hint
    assert "--image_resolution" in too_long_hint(["a.png"], []) and "--video" not in too_long_hint(["a.png"], [])
    assert too_long_hint([], []) == "Shorten the question."
    assert media_named([], ["c.mp4"]) == ("--video c.mp4", "videos")
    assert media_named(["a.png"], ["c.mp4"]) == ("--image a.png and --video c.mp4", "images and videos")


def test_too_long_video_question_names_the_video_settings(tiny_model_dir: Path, tmp_path: Path, run_tool) -> None:
    clip = write_clip(tmp_path / "clip.mp4", moving_square("left", 20, 32), fps=10)
    proc = run_tool("infer.py", "--model_name_or_path", str(tiny_model_dir), "--video", str(clip), "--question",
                    "red " * 5000, cwd=tmp_path, timeout=300, check=False)  # fmt: skip
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "Traceback" not in out
    assert "tokens after video expansion exceed max_length 4096" in out and "--video_maxlen" in out, out[-2000:]
    assert "--image" not in out


def test_question_message_places_videos() -> None:
    assert question_message("Which way?", [], [VideoRef("a.mp4")]).content == "<video>Which way?"
    asked = question_message("What is <video>?")
    assert VIDEO_PLACEHOLDER not in asked.content and plain_text(asked.content) == "What is <video>?"


@pytest.mark.slow
def test_infer_answers_a_video_and_video_records(tiny_model_dir: Path, tmp_path: Path, run_tool) -> None:
    clip = write_clip(tmp_path / "clip.mp4", moving_square("left", 20, 32), fps=10)
    proc = run_tool("infer.py", "--model_name_or_path", str(tiny_model_dir), "--video", str(clip), "--question",
                    "Which way?", "--max_new_tokens", "2", cwd=tmp_path, timeout=300)  # fmt: skip
    assert proc.stdout.startswith("generated "), proc.stdout + proc.stderr[-2000:]
    records = [{"videos": [name], "messages": [{"role": "user", "content": "<video>Which way?"},
                                               {"role": "assistant", "content": "left"}]}
               for name in ("clip.mp4", "missing.mp4")]  # fmt: skip
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    proc = run_tool("infer.py", "--model_name_or_path", str(tiny_model_dir), "--data_file", str(tmp_path / "d.jsonl"),
                    "--max_new_tokens", "2", cwd=tmp_path, timeout=300)  # fmt: skip
    assert "skipped record #1: video not found" in proc.stdout and "exact match: " in proc.stdout
    assert len([line for line in proc.stdout.splitlines() if line.startswith("{")]) == 1


def test_infer_refuses_a_missing_video_before_loading(tiny_model_dir: Path, tmp_path: Path, run_tool) -> None:
    proc = run_tool("infer.py", "--model_name_or_path", str(tiny_model_dir), "--video", "nope.mp4", "--question",
                    "q", cwd=tmp_path, timeout=300, check=False)  # fmt: skip
    assert proc.returncode != 0 and "--video 'nope.mp4': video not found" in proc.stderr


def test_a_family_without_video_says_so(tiny_paddleocr_vl_dir: Path, tmp_path: Path, run_tool) -> None:
    """The clip opens; the model is what cannot take it, and the fix says that (not "pass videos that open")."""
    clip = write_clip(tmp_path / "clip.mp4", moving_square("left", 8, 32), fps=4)
    proc = run_tool("infer.py", "--model_name_or_path", str(tiny_paddleocr_vl_dir), "--video", str(clip),
                    "--question", "q", cwd=tmp_path, timeout=300, check=False)  # fmt: skip
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "take images only" in proc.stderr and "Use a Qwen-VL model for video." in proc.stderr, proc.stderr[-1500:]
    assert "that open" not in proc.stderr
