"""check_data on video records: --show prints each sample's videos (count, sampled frames, video tokens), every
clip's header is read once, and a per-frame video pixel cap below the per-frame minimum is one warning that names
the keys, their values and the fix."""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path

import pytest

from paddlemix.testing.synthetic_video import moving_square, write_clip
from paddlemix.tools import check_data

CONFIG = Path(__file__).resolve().parents[2] / "paddlemix" / "config" / "tiny" / "sft_argument.json"
NO_EVAL = ["--do_eval", "false", "--evaluation_strategy", "no", "--max_length", "2048"]


def run(workspace: Path, records: list[dict], *args: str, capsys: pytest.CaptureFixture) -> tuple[int, dict, str]:
    """check_data's exit code, report and console for CONFIG with `records` as its one training source."""
    (workspace / "videos.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    spec = {"name": "chatml_dataset", "data_files": str(workspace / "videos.jsonl")}
    with pytest.raises(SystemExit) as ended:
        check_data.main([str(CONFIG), "--dataset", json.dumps({"train": [spec]}), *NO_EVAL, *args, "--report",
                         str(workspace / "report.json")])  # fmt: skip
    out = capsys.readouterr()
    return ended.value.code, json.loads((workspace / "report.json").read_text()), out.out + out.err


def video_record(video: str, question: str = "Which way?") -> dict:
    return {"videos": [video], "messages": [{"role": "user", "content": f"<video>{question}"},
                                            {"role": "assistant", "content": "left"}]}  # fmt: skip


@pytest.fixture()
def clips(workspace: Path) -> list[Path]:
    """Four 3-second clips at 10 fps (6 frames sampled each); the last in Matroska, whose header counts no
    frames (its packets are counted)."""
    names = ("a.mp4", "b.mp4", "c.mp4", "d.mkv")
    return [write_clip(workspace / name, moving_square("left", 30, 64, seed=k), fps=10) for k, name in
            enumerate(names)]  # fmt: skip


def test_show_prints_the_videos_of_a_video_sample(workspace: Path, clips: list[Path], monkeypatch, capsys) -> None:
    monkeypatch.chdir(workspace)
    code, _, console = run(workspace, [video_record(str(clips[0]))], "--show", "1", capsys=capsys)
    assert code == 0, console
    (head,) = [line for line in console.splitlines() if line.startswith("--- ")]
    # 6 frames of 64 px, enlarged to 336 px (the 128-token minimum): 3 temporal patches of 24 x 24 patches
    assert "videos 1 (6 frames, 432 video tokens, grid [[3, 24, 24]])" in head and "images" not in head, head


def test_each_clip_header_is_read_once(workspace: Path, clips: list[Path], monkeypatch, capsys) -> None:
    """The record's length, its video summary and the template check of the first records all plan the clips;
    one header read per clip serves them all."""
    from paddlemix.processors import video

    opened: Counter[str] = Counter()
    open_container = video._Container._open

    def counting_open(self) -> None:
        opened[str(self.ref)] += 1
        open_container(self)

    monkeypatch.setattr(video._Container, "_open", counting_open)
    monkeypatch.chdir(workspace)
    code, report, console = run(workspace, [video_record(str(c)) for c in clips], capsys=capsys)
    assert code == 0 and report["splits"]["train"]["usable"] == 4, console
    assert [e["frames"] for e in report["splits"]["train"]["sources"]["chatml_dataset:videos.jsonl"]
            ["video_records"]] == [6, 6, 6, 6]  # fmt: skip
    assert opened == {str(c): 1 for c in clips}


@pytest.mark.parametrize(
    ("flags", "said"),
    [
        (["--video_max_pixels", "12544"], ['"video_max_pixels" 12544', 'the default "video_min_pixels" 100352']),
        (["--video_resolution", "112"], ['"video_resolution" 112 (at most 12544 pixels', '"video_min_pixels" 100352']),
        (["--video_max_pixels", "12544", "--video_min_pixels", "50176"], ['"video_min_pixels" 50176']),
    ],
)  # fmt: skip
def test_pixel_cap_below_the_minimum_is_one_warning(
    workspace: Path, clips: list[Path], monkeypatch, capsys, caplog, flags: list[str], said: list[str]
) -> None:
    from paddlemix.datasets import encoded

    monkeypatch.setattr(encoded, "SAID", set())
    monkeypatch.chdir(workspace)
    with caplog.at_level(logging.WARNING, logger="paddlemix.datasets.encoded"):
        code, report, console = run(workspace, [video_record(str(c)) for c in clips[:3]], *flags, capsys=capsys)
    assert code == 0, console
    warnings = [r.getMessage() for r in caplog.records if "video_min_pixels" in r.getMessage()]
    assert len(warnings) == 1, warnings  # once per run, not once per record
    assert all(s in warnings[0] for s in said) and 'Set "video_min_pixels" to at most 12544' in warnings[0]
    # what it warns of: the 64-px frames come out over the cap
    tokens = report["splits"]["train"]["sources"]["chatml_dataset:videos.jsonl"]["video_records"][0]["video_tokens"]
    assert tokens // 3 * 4 * 14 * 14 > 12544


def test_no_warning_when_the_minimum_fits_under_the_cap(workspace: Path, clips, monkeypatch, capsys, caplog) -> None:
    from paddlemix.datasets import encoded

    monkeypatch.setattr(encoded, "SAID", set())
    monkeypatch.chdir(workspace)
    with caplog.at_level(logging.WARNING, logger="paddlemix.datasets.encoded"):
        code, report, _ = run(workspace, [video_record(str(clips[0]))], "--video_max_pixels", "12544",
                              "--video_min_pixels", "3136", capsys=capsys)  # fmt: skip
    assert code == 0 and not [r for r in caplog.records if "video_min_pixels" in r.getMessage()]
    tokens = report["splits"]["train"]["sources"]["chatml_dataset:videos.jsonl"]["video_records"][0]["video_tokens"]
    assert tokens // 3 * 4 * 14 * 14 <= 12544  # per frame: tokens x merged 28 x 28 pixels


def test_a_training_run_warns_once(tiny_model_dir: Path, tiny_qwen3_vl_dir: Path, caplog) -> None:
    """A training run builds its encoder twice (template check, datasets): still one warning; Qwen3-VL's minimum
    is 128 x 32^2; no warning without a cap or with the minimum under it."""
    from paddlemix.arguments import DataArgs
    from paddlemix.datasets import encoded
    from paddlemix.models import adapter_for

    encoded.SAID.clear()
    data = DataArgs(video_max_pixels=12544)
    adapter = adapter_for(tiny_model_dir)
    processor = adapter.load_processor(tiny_model_dir)
    with caplog.at_level(logging.WARNING, logger="paddlemix.datasets.encoded"):
        for _ in range(2):
            encoded.build_encoder(adapter, processor, data)
    assert len([r for r in caplog.records if "video_min_pixels" in r.getMessage()]) == 1
    assert "128 x 32^2" in encoded.video_pixels_warning(DataArgs(video_max_pixels=100352), 32)
    assert encoded.video_pixels_warning(DataArgs(video_max_pixels=12544, video_min_pixels=12544), 28) is None
    assert encoded.video_pixels_warning(DataArgs(), 28) is None
