"""Video records: LLaMA-Factory / ms-swift `videos` + `<video>`, typed video parts with sampling options, frame lists,
images and videos in one record; counts checked; `<video>` of a record without videos stays text."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from paddlemix.arguments import DatasetSource
from paddlemix.datasets.conversation import TEXT_GUARD, Message, SampleError, VideoRef
from paddlemix.datasets.sources import SourceDataset
from paddlemix.processors.video_sampling import VideoOptions


def data_of(tmp_path: Path, records: list[dict]) -> SourceDataset:
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return SourceDataset(DatasetSource(name="chatml_dataset", data_files=[str(path)]))


def test_videos_and_placeholders(tmp_path: Path) -> None:
    record = {"videos": ["a.mp4", "b.mp4"], "images": ["i.png"],
              "messages": [{"role": "user", "content": "<video>and<image>then<video>?"},
                           {"role": "assistant", "content": "A"}]}  # fmt: skip
    sample = data_of(tmp_path, [record])[0]
    assert sample.messages[0] == Message("user", "<video>and<image>then<video>?")
    assert sample.videos == (VideoRef(str(tmp_path / "a.mp4")), VideoRef(str(tmp_path / "b.mp4")))
    assert sample.images == (str(tmp_path / "i.png"),)


def test_sharegpt_video_key_and_frame_list(tmp_path: Path) -> None:
    record = {"video": [["f0.jpg", "f1.jpg", "f2.jpg"]],
              "conversations": [{"from": "human", "value": "<video>Q"}, {"from": "gpt", "value": "A"}]}  # fmt: skip
    (video,) = data_of(tmp_path, [record])[0].videos
    assert video.source == tuple(str(tmp_path / f"f{k}.jpg") for k in range(3))


def test_typed_video_part_carries_its_options(tmp_path: Path) -> None:
    part = {"type": "video", "video": "/abs/c.mp4", "fps": 1.0, "max_frames": 8, "video_start": 1.5,
            "video_end": 4, "max_pixels": 50176, "total_pixels": 1000000}  # fmt: skip
    record = {"messages": [{"role": "user", "content": [part, {"type": "text", "text": "Q"}]},
                           {"role": "assistant", "content": "A"}]}  # fmt: skip
    sample = data_of(tmp_path, [record])[0]
    assert sample.messages[0].content == "<video>Q"
    assert sample.videos == (VideoRef("/abs/c.mp4", VideoOptions(fps=1.0, max_frames=8, video_start=1.5, video_end=4,
                                                                 max_pixels=50176, total_pixels=1000000)),)  # fmt: skip


def test_videos_without_placeholder_go_first(tmp_path: Path) -> None:
    record = {
        "videos": ["a.mp4"],
        "messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}],
    }
    assert data_of(tmp_path, [record])[0].messages[0] == Message("user", "<video>Q")


def test_video_mark_without_videos_stays_text(tmp_path: Path) -> None:
    record = {"messages": [{"role": "user", "content": "what is <video>?"}, {"role": "assistant", "content": "A"}]}
    sample = data_of(tmp_path, [record])[0]
    assert sample.videos == () and sample.messages[0].content == f"what is <{TEXT_GUARD}video>?"


@pytest.mark.parametrize(
    ("record", "notes"),
    [
        ({"messages": [{"role": "user", "content": "what do <video> and <video> do?"},
                       {"role": "assistant", "content": "A"}]}, ['has no videos: its "<video>" (2 in the record) stays text']),
        ({"images": ["i.png"], "messages": [{"role": "user", "content": "<image>is <video> html?"},
                                            {"role": "assistant", "content": "A"}]},
         ['has no videos: its "<video>" (1 in the record) stays text']),
        ({"videos": ["a.mp4"], "messages": [{"role": "user", "content": "<video>is <image> html?"},
                                            {"role": "assistant", "content": "A"}]},
         ['has no images: its "<image>" (1 in the record) stays text, as in every such record of this source '
          "(<img> tags too)"]),
        ({"messages": [{"role": "user", "content": "<image> or <video>?"}, {"role": "assistant", "content": "A"}]},
         ['has no images: its "<image>" (1 in the record) stays text',
          'has no videos: its "<video>" (1 in the record) stays text']),
    ],
)  # fmt: skip
def test_marks_that_stay_text_are_noted_by_their_kind(tmp_path: Path, caplog, record: dict, notes: list) -> None:
    """The note names the marks the record has (and how many), never <image> for a <video>; once per file."""
    with caplog.at_level(logging.INFO, logger="paddlemix.datasets.sources"):
        data = data_of(tmp_path, [record, record])
        data[0], data[1]
    said = [r.getMessage() for r in caplog.records if "stay" in r.getMessage()]
    assert len(said) == len(notes) and all(note in line for note, line in zip(notes, said)), said
    assert all("d.jsonl #0 " in line for line in said)


@pytest.mark.parametrize(
    ("record", "reason"),
    [
        ({"videos": ["a.mp4"], "messages": [{"role": "user", "content": "<video><video>Q"},
                                            {"role": "assistant", "content": "A"}]}, "2 <video> placeholders but 1"),
        ({"videos": ["a.mp4"], "messages": [{"role": "user", "content": "<video>Q"},
                                            {"role": "assistant", "content": "A"},
                                            {"role": "user", "content": "<video>again"},
                                            {"role": "assistant", "content": "B"}]}, "2 <video> placeholders but 1"),
        ({"videos": ["a.mp4"], "messages": [{"role": "user", "content": "<video>Q"},
                                            {"role": "assistant", "content": "<video>A"}]}, "<video>"),
        ({"messages": [{"role": "user", "content": [{"type": "video", "video": "a.mp4", "fps": "fast"}]},
                       {"role": "assistant", "content": "A"}]}, 'video "fps" must be a non-negative number'),
        ({"messages": [{"role": "user", "content": [{"type": "video"}]}, {"role": "assistant", "content": "A"}]},
         "video part has no video"),
    ],
)  # fmt: skip
def test_bad_video_records_are_skips(tmp_path: Path, record: dict, reason: str) -> None:
    with pytest.raises(SampleError, match=reason):
        data_of(tmp_path, [record])[0]


def test_run_level_video_keys_map_onto_sampling_options() -> None:
    from paddlemix.arguments import DataArgs
    from paddlemix.datasets.encoded import video_defaults

    paddlemix_keys = DataArgs(video_fps=1.0, video_maxlen=64, video_resolution=448)
    assert video_defaults(paddlemix_keys) == VideoOptions(fps=1.0, max_frames=64, max_pixels=448 * 448)
    factory_keys = DataArgs(video_resolution=448, video_min_pixels=3136, video_max_pixels=12544)
    assert video_defaults(factory_keys) == VideoOptions(min_pixels=3136, max_pixels=12544)
    record = VideoOptions(max_frames=8).over(video_defaults(paddlemix_keys))  # a record's own keys win
    assert (record.fps, record.max_frames) == (1.0, 8)


def test_preference_pairs_with_videos_are_skips(tmp_path: Path) -> None:
    from paddlemix.datasets.pairs import read_pair

    record = {"videos": ["a.mp4"], "messages": [{"role": "user", "content": "<video>Q"}], "chosen": "a",
              "rejected": "b"}  # fmt: skip
    with pytest.raises(SampleError, match="preference pairs take images only"):
        read_pair(record, tmp_path)
    typed = {"messages": [{"role": "user", "content": [{"type": "video", "video": "a.mp4"}]}], "chosen": "a",
             "rejected": "b"}  # fmt: skip
    with pytest.raises(SampleError, match="preference pairs take images only"):
        read_pair(typed, tmp_path)
