"""paddlemix-eval's run: the metrics of a small file against values computed by hand, resuming from
predictions.jsonl, skipped records. (The same run on a tiny model at batch 1 and 8 and through the server is in
test_server.py, which owns the server.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from paddlemix.datasets.conversation import IMAGE_PLACEHOLDER
from paddlemix.inference.evaluate import PREDICTIONS, Question, evaluate_file, read_predictions

pytest.importorskip("sacrebleu", reason="the eval extra (sacrebleu, rouge-score, rapidfuzz) is not installed")

# question -> (what the fake model answers, the record's references)
ANSWERS = {
    "What color?": ("red", ["red"]),
    "How many?": ("104", ["100"]),
    "Describe it.": ("the cat sat on the mat today", ["the cat sat on the mat", "a cat on a mat"]),
    "Which one?": ("", ["blue"]),
}


def write_records(folder: Path) -> Path:
    """Four scored records (the first with an image, the third with two references) and one without an answer."""
    Image.new("RGB", (32, 32), (200, 30, 30)).save(folder / "red.png")
    rows = []
    for question, (_, refs) in ANSWERS.items():
        row = {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": refs[0]}]}
        if len(refs) > 1:
            row["references"] = refs
        rows.append(row)
    rows[0] |= {"images": ["red.png"], "messages": [{"role": "user", "content": "<image>What color?"},
                                                    {"role": "assistant", "content": "red"}]}  # fmt: skip
    rows.append({"messages": [{"role": "user", "content": "No answer here"}]})
    path = folder / "eval.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


class FakeModel:
    """Answers from ANSWERS by the last user text, counting the records it was asked."""

    def __init__(self) -> None:
        self.asked: list[int] = []

    def __call__(self, batch: list[Question]) -> list[str | Exception]:
        self.asked += [q.index for q in batch]
        return [ANSWERS[q.sample.messages[-1].content.replace(IMAGE_PLACEHOLDER, "")][0] for q in batch]


def test_metrics_of_a_small_file_by_hand(tmp_path: Path) -> None:
    report = evaluate_file(str(write_records(tmp_path)), "chatml_dataset", FakeModel(), tmp_path / "out", 2)
    table = report["metrics"]
    assert table["records"] == 4
    assert table["exact_match"] == pytest.approx(100 * 1 / 4)  # red
    assert table["relaxed_accuracy"] == pytest.approx(100 * 2 / 4)  # red, 104 within 5 % of 100
    # ANLS: red 1; 104/100 one edit in 3 -> 2/3; " today" is 6 insertions over the longer 28 chars -> 22/28; "" 0
    assert table["anls"] == pytest.approx(100 * (1 + 2 / 3 + 22 / 28 + 0) / 4)
    assert table["edit_distance"] == pytest.approx(100 * (0 + 1 / 3 + 6 / 28 + 1) / 4)
    # CER: edits over reference characters, closest reference each: (0 + 1 + 6 + 4) / (3 + 3 + 22 + 4)
    assert table["cer"] == pytest.approx(11 / 32)
    # ROUGE-L F1: red 1; 104 0; best of 6-word LCS (P 6/7, R 1 -> 12/13) and 3-word LCS (P 3/7, R 3/5 -> 1/2); "" 0
    assert table["rouge_l"] == pytest.approx(100 * (1 + 0 + 12 / 13 + 0) / 4)
    assert 0 < table["bleu"] < 100
    assert [s["index"] for s in report["skipped"]] == [4]
    saved = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert saved["metrics"] == table
    rows = read_predictions(tmp_path / "out" / PREDICTIONS)
    assert rows[2] == {"index": 2, "prediction": ANSWERS["Describe it."][0], "references": ANSWERS["Describe it."][1]}


def test_a_rerun_answers_only_what_is_missing_and_scores_the_same(tmp_path: Path) -> None:
    data = str(write_records(tmp_path))
    whole = evaluate_file(data, "chatml_dataset", FakeModel(), tmp_path / "whole", 8)
    first = FakeModel()
    evaluate_file(data, "chatml_dataset", first, tmp_path / "parts", 1, limit=2)
    assert first.asked == [0, 1]
    with open(tmp_path / "parts" / PREDICTIONS, "a", encoding="utf-8") as f:
        f.write('{"index": 2, "predic')  # the torn last line of a killed run
    second = FakeModel()
    parts = evaluate_file(data, "chatml_dataset", second, tmp_path / "parts", 3)
    assert second.asked == [2, 3]  # record 4 has no answer to score: skipped again, never asked
    assert parts["metrics"] == whole["metrics"]
    assert read_predictions(tmp_path / "parts" / PREDICTIONS) == read_predictions(tmp_path / "whole" / PREDICTIONS)
    third = FakeModel()
    evaluate_file(data, "chatml_dataset", third, tmp_path / "parts", 3)
    assert third.asked == []


def test_a_failed_answer_is_skipped_and_retried_next_run(tmp_path: Path) -> None:
    data = str(write_records(tmp_path))

    def flaky(batch: list[Question]) -> list[str | Exception]:
        return [RuntimeError("out of memory") if q.index == 1 else FakeModel()([q])[0] for q in batch]

    report = evaluate_file(data, "chatml_dataset", flaky, tmp_path / "out", 8)
    assert report["metrics"]["records"] == 3
    assert {"index": 1, "reason": "generation failed: out of memory"} in report["skipped"]
    retry = FakeModel()
    assert evaluate_file(data, "chatml_dataset", retry, tmp_path / "out", 8)["metrics"]["records"] == 4
    assert retry.asked == [1]


def test_predictions_of_another_file_are_not_resumed(tmp_path: Path) -> None:
    from paddlemix.utils.errors import UserError

    data = write_records(tmp_path)
    evaluate_file(str(data), "chatml_dataset", FakeModel(), tmp_path / "out", 8)
    other = tmp_path / "other.jsonl"
    other.write_bytes(data.read_bytes())
    with pytest.raises(UserError, match="--output_dir"):
        evaluate_file(str(other), "chatml_dataset", FakeModel(), tmp_path / "out", 8)


def test_references_in_the_shapes_vqa_files_bring(tmp_path: Path) -> None:
    Image.new("RGB", (32, 32)).save(tmp_path / "a.png")
    rows = [{"image": "a.png", "question": "q1?", "answer": ["yes", "yeah", "yes"]},  # VQA list, a duplicate
            {"image": "a.png", "question": "q2?", "answers": [12, "twelve"]},  # DocVQA / ChartQA style
            {"image": "a.png", "question": "q3?", "answers": [{"answer": "red", "answer_confidence": "yes"},
                                                             {"answer": "dark red"}]},  # VQAv2 dicts
            {"image": "a.png", "question": "q4?", "answer": "solo"}]  # fmt: skip
    data = tmp_path / "vqa.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    evaluate_file(str(data), "coco_vqa", lambda batch: ["x"] * len(batch), tmp_path / "out", 8)
    rows = read_predictions(tmp_path / "out" / PREDICTIONS)
    assert [rows[i]["references"] for i in range(4)] == [["yes", "yeah"], ["12", "twelve"], ["red", "dark red"],
                                                         ["solo"]]  # fmt: skip
