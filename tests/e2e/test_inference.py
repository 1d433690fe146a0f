"""The real `infer.py`: tokens/s lines, command-line settings over generation_config.json, an empty answer shown
with a hint, and batched --data_file runs that skip unusable records."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
SPEED = re.compile(r"^generated (\d+) tokens? in [\d.]+ s: [\d.]+ tokens/s \(prompt pass [\d.]+ s\)$")


def generated_tokens(stdout: str) -> int:
    """N of the one 'generated N tokens in ...' line (answers may span several lines, so it is searched)."""
    (count,) = [int(m[1]) for m in map(SPEED.match, stdout.splitlines()) if m]
    return count


def model_copy(source: Path, folder: Path, **generation: object) -> Path:
    """`source` linked file by file, with generation_config.json keys replaced."""
    folder.mkdir()
    for file in source.iterdir():
        if file.name != "generation_config.json":
            (folder / file.name).symlink_to(file)
    saved = json.loads((source / "generation_config.json").read_text())
    (folder / "generation_config.json").write_text(json.dumps({**saved, **generation}))
    return folder


def test_question_prints_speed_and_answer(run_tool, tiny_model_dir: Path, shapes_data, tmp_path: Path) -> None:
    image = next((shapes_data["train"].parent / "images").glob("*.png"))
    model = model_copy(tiny_model_dir, tmp_path / "model", max_new_tokens=2)
    args = ["--model_name_or_path", str(model), "--image", str(image), "--question", "What color is it?"]
    stdout = run_tool("infer.py", *args, "--repetition_penalty", "1.2", cwd=tmp_path).stdout
    assert generated_tokens(stdout) == 2  # generation_config.json's max_new_tokens
    answer = stdout[stdout.index(" s)\n") + 4 :].strip()
    assert answer and not answer.startswith('answer: ""')


def test_empty_answer_is_shown_with_a_hint(run_tool, tiny_model_dir: Path, tmp_path: Path) -> None:
    vocab = json.loads((tiny_model_dir / "config.json").read_text())["vocab_size"]
    model = model_copy(tiny_model_dir, tmp_path / "model", eos_token_id=list(range(vocab)))  # stops at once
    out = run_tool("infer.py", "--model_name_or_path", str(model), "--question", "Hi", cwd=tmp_path).stdout
    last = out.strip().splitlines()[-1]
    assert last.startswith('answer: ""') and "more training" in last and "chat template" in last
    assert generated_tokens(out) == 1  # the eos token itself


def test_data_file_in_batches_skips_bad_records(run_tool, tiny_model_dir: Path, shapes_data, tmp_path: Path) -> None:
    records = shapes_data["eval"].read_text().splitlines()[:5]
    broken = json.loads(records[0])
    broken["images"] = ["no/such/image.png"]
    data = tmp_path / "eval.jsonl"
    data.write_text("\n".join([*records[:2], json.dumps(broken), *records[2:]]) + "\n")
    # Relative image paths resolve against the data file's folder: link the shapes images next to it.
    (tmp_path / "images").symlink_to(shapes_data["eval"].parent / "images")
    answers = tmp_path / "answers.jsonl"
    args = ["--model_name_or_path", str(tiny_model_dir), "--data_file", str(data), "--output", str(answers)]
    lines = run_tool("infer.py", *args, "--batch_size", "2", "--max_new_tokens", "3", cwd=tmp_path).stdout.splitlines()
    assert re.match(r"^exact match: \d/5 = [\d.]+% \(1 records skipped\)$", lines[-2]), lines[-2]
    assert re.match(r"^edit distance \(normalised, mean\): [\d.]+; CER: [\d.]+$", lines[-1]), lines[-1]
    assert generated_tokens("\n".join(lines)) <= 15 and "skipped record #2: image not found" in lines[-4]
    results = [json.loads(line) for line in answers.read_text().splitlines()]
    assert [r["index"] for r in results] == [0, 1, 3, 4, 5]


def test_missing_or_broken_image_is_one_paragraph(run_tool, tiny_model_dir: Path, shapes_data, tmp_path: Path) -> None:
    base = ["--model_name_or_path", str(tiny_model_dir), "--question", "What color is it?", "--image"]
    missing = run_tool("infer.py", *base, "nonexistent.png", cwd=tmp_path, check=False)
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
    assert "--image 'nonexistent.png'" in missing.stderr and "image not found" in missing.stderr
    assert "chat template:" not in missing.stderr  # checked before anything loads
    png = next((shapes_data["train"].parent / "images").glob("*.png")).read_bytes()
    (tmp_path / "cut.png").write_bytes(png[:60])  # the header reads, the pixels do not decode
    broken = run_tool("infer.py", *base, "cut.png", cwd=tmp_path, check=False)
    assert broken.returncode == 2 and "Traceback" not in broken.stderr
    assert "image cannot be decoded: cut.png" in broken.stderr and "--image" in broken.stderr
