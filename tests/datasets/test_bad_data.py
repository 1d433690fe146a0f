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


def test_one_missing_image_is_one_warning_and_32_seen_of_32(
    tiny_model_dir: Path, shapes_data: dict[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The bad record's slot of the epoch goes to the next usable sample, which is what is counted as seen there:
    an epoch over a 32-record file with one missing image is 32 seen, 1 skipped, one warning (not 33 and two)."""
    images = sorted((shapes_data["train"].parent / "images").glob("train_*.png"))[:32]
    lines = [chat_line(str(p)) for p in images]
    lines[5] = chat_line("imgs/missing.png")
    path = tmp_path / "one_missing.jsonl"
    path.write_text("\n".join(lines) + "\n")
    log = SkipLog(tmp_path / "skipped_samples.jsonl", max_skip_ratio=1.0)
    data = dataset(tiny_model_dir, [path], log)
    data.count_loaded = False  # as in training: the trainer counts the samples it trains, with their skips
    for i in range(len(data)):
        sample = data[i]
        log.ok(sample["sample_id"].split("#")[0])
        for line in sample["skips"]:
            log.add_line(line)
    assert log.summary() == {"chatml_dataset:one_missing.jsonl": {"seen": 32, "skipped": 1}}
    warnings = [r.getMessage() for r in caplog.records if "skipped chatml" in r.getMessage()]
    assert len(warnings) == 1 and len(log.path.read_text().splitlines()) == 1
    assert f'relative path "imgs/missing.png" looked up in {tmp_path}, the data file\'s folder' in warnings[0]
    assert 'set "image_root" on this source' in warnings[0]


def test_paths_relative_to_the_working_directory_name_image_root(
    tiny_model_dir: Path, shapes_data: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """LLaVA files often hold paths relative to where training starts; here they resolve against the data file's
    folder (data/data/images/...), so every record fails: the message names the folder looked in, that the image
    exists under the working directory, and the image_root that fixes it (not "looks mis-formatted")."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "images").symlink_to(shapes_data["train"].parent / "images")
    records = [chat_line(f"data/images/train_{i:05d}.png") for i in range(MISFORMAT_PROBE + 5)]
    (tmp_path / "data" / "llava.jsonl").write_text("\n".join(records) + "\n")
    log = SkipLog(max_skip_ratio=1.0)
    encode_all(dataset(tiny_model_dir, [Path("data/llava.jsonl")], log))
    with pytest.raises(UserError) as err:
        log.raise_if_exceeded()
    message = str(err.value)
    assert "looks mis-formatted" not in message and f"the images of its first {MISFORMAT_PROBE} records" in message
    assert "image not found: data/data/images/train_" in message
    assert 'looked up in data, the data file\'s folder; it exists under the working directory: set "image_root": ' \
        f'"{tmp_path}"' in message  # fmt: skip
    fixed = SkipLog(max_skip_ratio=1.0)
    source = DatasetSource(name="chatml_dataset", data_files=["data/llava.jsonl"], image_root=str(tmp_path))
    processor = AutoProcessorMIX.from_pretrained(tiny_model_dir)
    encoder = adapter_for(tiny_model_dir).sample_processor(processor, 128)
    encode_all(build_dataset([source], encoder, processor, seed=0, skip_log=fixed))
    assert fixed.summary() == {"chatml_dataset:llava.jsonl": {"seen": MISFORMAT_PROBE + 5, "skipped": 0}}


def test_an_eval_record_is_seen_once_however_many_evaluations(tiny_model_dir: Path, faulty_data: Path) -> None:
    log = SkipLog(max_skip_ratio=1.0)
    data = dataset(tiny_model_dir, [faulty_data], log, split="eval")
    for _ in range(3):  # three evaluations
        encode_all(data)
    assert log.summary() == {"chatml_dataset:faulty.jsonl": {"seen": len(data), "skipped": len(PLANTED)}}


def test_sample_ids_are_unique_over_the_files_of_a_source(tiny_model_dir: Path, shapes_data, tmp_path: Path) -> None:
    """The eval loss and the eval `seen` count each sample id once: records 0, 1, 2 of two files of one source
    must not share ids (they did: `source#0` twice, so the second file's records replaced the first's)."""
    images = sorted((shapes_data["train"].parent / "images").glob("train_*.png"))[:6]
    files = []
    for k in range(2):
        files.append(tmp_path / f"part{k}.jsonl")
        files[-1].write_text("\n".join(chat_line(str(p)) for p in images[3 * k : 3 * k + 3]) + "\n")
    processor = AutoProcessorMIX.from_pretrained(tiny_model_dir)
    encoder = adapter_for(tiny_model_dir).sample_processor(processor, 128)
    source = DatasetSource(name="chatml_dataset", data_files=[str(f) for f in files])
    data = build_dataset([source], encoder, processor, seed=0, skip_log=SkipLog(), split="eval")
    ids = [data[i]["sample_id"] for i in range(len(data))]
    name = "chatml_dataset:part0.jsonl"
    assert sorted(ids) == sorted(f"{name}#{k}:{i}" for k in range(2) for i in range(3))
    single = dataset(tiny_model_dir, [files[1]], SkipLog(), split="eval")
    assert sorted(single[i]["sample_id"] for i in range(3)) == [f"chatml_dataset:part1.jsonl#{i}" for i in range(3)]
