"""Planted faults: each bad record is skipped with its own reason, logged with file and index, and counted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import PLANTED

from paddlemix.arguments import DatasetSource
from paddlemix.auto import AutoProcessorMIX
from paddlemix.datasets.conversation import SampleError
from paddlemix.datasets.encoded import MISFORMAT_PROBE, SkipLog, build_dataset
from paddlemix.models import adapter_for
from paddlemix.utils.errors import UserError


def dataset(model_dir: Path, files: list[Path], skip_log: SkipLog, split: str = "train"):
    processor = AutoProcessorMIX.from_pretrained(model_dir)
    encoder = adapter_for(model_dir).sample_processor(processor, 128)
    sources = [DatasetSource(name="chatml_dataset", data_files=[str(f)]) for f in files]
    return build_dataset(sources, encoder, processor, seed=0, skip_log=skip_log, split=split)


def test_each_planted_fault_is_skipped_with_its_reason(tiny_model_dir: Path, faulty_data: Path, tmp_path: Path):
    log = SkipLog(tmp_path / "skipped_samples.jsonl", max_skip_ratio=1.0)
    data = dataset(tiny_model_dir, [faulty_data], log)
    good = 0
    for i in range(len(data)):
        try:
            data.encode(i)
            good += 1
        except SampleError:
            pass
    records = [json.loads(line) for line in (tmp_path / "skipped_samples.jsonl").read_text().splitlines()]
    by_index = {r["index"]: r for r in records}
    assert set(by_index) == set(PLANTED)
    for index, reason in PLANTED.items():
        assert reason in by_index[index]["reason"], (index, by_index[index]["reason"])
        assert by_index[index]["file"] == str(faulty_data)
    assert good == len(data) - len(PLANTED)
    assert log.summary() == {"chatml_dataset:faulty.jsonl": {"seen": len(data), "skipped": len(PLANTED)}}


def test_getitem_replaces_a_bad_sample_with_the_next_good_one(tiny_model_dir: Path, faulty_data: Path):
    data = dataset(tiny_model_dir, [faulty_data], SkipLog(max_skip_ratio=1.0))
    bad = next(i for i in range(len(data)) if data.mix.index[i][1] == 1)
    assert "input_ids" in data[bad]


def encode_all(data) -> None:
    for i in range(len(data)):
        try:
            data.encode(i)
        except SampleError:
            pass


def test_skip_budget_stops_the_run(tiny_model_dir: Path, faulty_data: Path):
    log = SkipLog(max_skip_ratio=0.05)
    encode_all(dataset(tiny_model_dir, [faulty_data], log))
    with pytest.raises(UserError, match="more than max_skip_ratio 5%"):
        log.raise_if_exceeded()
    relaxed = SkipLog(max_skip_ratio=0.5)
    encode_all(dataset(tiny_model_dir, [faulty_data], relaxed))
    relaxed.raise_if_exceeded()


def test_misformatted_source_is_reported_once(tiny_model_dir: Path, tmp_path: Path, caplog):
    wrong = tmp_path / "wrong.jsonl"
    wrong.write_text("".join(json.dumps({"question": "q", "answer": "a"}) + "\n" for _ in range(200)))
    log = SkipLog(max_skip_ratio=1.0)
    encode_all(dataset(tiny_model_dir, [wrong], log))
    with pytest.raises(UserError, match=f"looks mis-formatted: its first {MISFORMAT_PROBE} records all failed"):
        log.raise_if_exceeded()
    assert len([r for r in caplog.records if "skipped" in r.getMessage()]) <= 6


def chat_line(image: str) -> str:
    return json.dumps({"images": [image], "messages": [{"role": "user", "content": "<image>Q"},
                                                       {"role": "assistant", "content": "A"}]})  # fmt: skip


def test_any_exception_on_one_record_is_a_skip(tiny_model_dir: Path, faulty_data: Path, tmp_path: Path) -> None:
    from paddlemix.testing.wild_images import huge_png_header

    good = json.loads(faulty_data.read_text().splitlines()[0])["images"][0]
    (tmp_path / "huge.png").write_bytes(huge_png_header())
    (tmp_path / "cursed.png").write_bytes(Path(good).read_bytes())
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join([chat_line(good), chat_line("huge.png"), chat_line("cursed.png")]) + "\n")
    log = SkipLog(tmp_path / "skipped_samples.jsonl", max_skip_ratio=1.0)
    data = dataset(tiny_model_dir, [path], log)
    load = data.processor.reader.load

    def fail_on_cursed(ref):  # a library failing on one strange file
        if str(ref).endswith("cursed.png"):
            raise ZeroDivisionError("integer division by zero")
        return load(ref)

    data.processor.reader.load = fail_on_cursed
    encode_all(data)
    reasons = {r["index"]: r["reason"] for r in map(json.loads, log.path.read_text().splitlines())}
    assert set(reasons) == {1, 2}
    assert reasons[1].startswith("image too large (20000x20000)")
    assert reasons[2].startswith("unexpected ZeroDivisionError while reading the record")


def test_a_source_without_usable_records_says_so_with_its_reasons(tiny_model_dir: Path, tmp_path: Path) -> None:
    path = tmp_path / "three.jsonl"
    path.write_text("\n".join(chat_line(f"missing{i}.png") for i in range(3)) + "\n")
    log = SkipLog(max_skip_ratio=1.0)
    data = dataset(tiny_model_dir, [path], log)
    with pytest.raises(UserError, match="no usable sample in the train data: all 3 were skipped") as err:
        data[0]
    assert "image not found" in str(err.value) and "64" not in str(err.value)
    assert log.summary() == {"chatml_dataset:three.jsonl": {"seen": 3, "skipped": 3}}


def test_eval_set_without_usable_record_stops_before_training(
    tiny_model_dir: Path, faulty_data: Path, tmp_path: Path
) -> None:
    from paddlemix.trainer.sft import preflight

    path = tmp_path / "eval.jsonl"
    path.write_text(chat_line("missing.png") + "\n")
    log = SkipLog(max_skip_ratio=1.0)
    train = dataset(tiny_model_dir, [faulty_data], log)
    with pytest.raises(UserError, match="no usable sample in the eval data"):
        preflight(train, log, dataset(tiny_model_dir, [path], log, split="eval"))
    preflight(train, log, dataset(tiny_model_dir, [faulty_data], log, split="eval"))
