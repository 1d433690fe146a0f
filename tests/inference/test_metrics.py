"""Metrics against values computed by hand."""

from __future__ import annotations

import pytest

from paddlemix.inference.metrics import (
    anls,
    corpus_bleu,
    edit_distance,
    exact_match,
    ocr_scores,
    relaxed_accuracy,
    rouge_l,
    score_records,
    sentence_bleu,
)

pytest.importorskip("sacrebleu", reason="the eval extra (sacrebleu, rouge-score, rapidfuzz) is not installed")


def test_exact_match_normalises_case_space_and_outer_punctuation() -> None:
    assert exact_match("  Red. ", ["red"]) == 1.0
    assert exact_match("dark red", ["red", "crimson"]) == 0.0
    assert exact_match("Crimson!", ["red", "crimson"]) == 1.0


@pytest.mark.parametrize(
    "prediction, reference, expected",
    [("104", "100", 1.0), ("105", "100", 1.0), ("105.1", "100", 0.0), ("12%", "0.12", 1.0), ("1,000", "1000", 1.0),
     ("0", "0", 1.0), ("0.01", "0", 0.0), ("Yes", "yes", 1.0), ("yes.", "yes", 0.0), ("-95", "-100", 1.0)],
)  # fmt: skip
def test_relaxed_accuracy_is_chartqa_s(prediction: str, reference: str, expected: float) -> None:
    assert relaxed_accuracy(prediction, [reference]) == expected


def test_anls_and_edit_distance() -> None:
    # "kitten" -> "sitting": 3 edits over the longer length 7
    assert edit_distance("kitten", ["sitting"]) == pytest.approx(3 / 7)
    assert anls("kitten", ["sitting"]) == pytest.approx(4 / 7)
    # "abcd" vs "wxyd": 3 edits / 4 = 0.75 >= 0.5 -> 0; the best reference wins
    assert anls("abcd", ["wxyd"]) == 0.0 and anls("abcd", ["wxyd", "abce"]) == pytest.approx(0.75)
    assert anls("  Hello   World ", ["hello world"]) == 1.0  # DocVQA lowercases and squeezes spaces


def test_rouge_l_is_the_lcs_f1() -> None:
    # LCS of "the cat sat" and "the cat was sat here" is 3 words: P = 3/3, R = 3/5, F1 = 2PR/(P+R) = 0.75
    assert rouge_l("the cat sat", ["the cat was sat here"]) == pytest.approx(0.75)


def test_bleu_by_hand() -> None:
    # hypothesis one word longer than the reference: p1..p4 = 6/7, 5/6, 4/5, 3/4, brevity 1 -> (3/7) ** 0.25
    bleu = corpus_bleu(["the cat sat on the mat today"], [["the cat sat on the mat"]])
    assert bleu == pytest.approx(100 * (3 / 7) ** 0.25, abs=1e-6)
    # a second reference that is a copy changes nothing; a shorter record list pads with its first reference
    assert corpus_bleu(["the cat sat on the mat today"], [["the cat sat on the mat"] * 2]) == pytest.approx(bleu)
    assert sentence_bleu("a red circle", ["a red circle"]) == pytest.approx(1.0)
    close = sentence_bleu("a red circle on a grey background", ["a red circle on a dark background"])
    far = sentence_bleu("a blue square", ["a red circle on a dark background"])
    assert 0 < far < close < 1 and sentence_bleu("", ["a red circle"]) == 0.0


def test_table_of_a_small_file() -> None:
    predictions = ["red", "105", "kitten", "blue"]
    references = [["Red"], ["100"], ["sitting"], ["green", "blue"]]
    table = score_records(predictions, references)
    assert table["records"] == 4
    assert table["exact_match"] == pytest.approx(100 * 2 / 4)  # red, blue
    assert table["relaxed_accuracy"] == pytest.approx(100 * 3 / 4)  # red (case off), 105 within 5 %, blue
    # ANLS: red 1, 105 vs 100 one edit in 3 -> 2/3, kitten 4/7, blue 1
    assert table["anls"] == pytest.approx(100 * (1 + 2 / 3 + 4 / 7 + 1) / 4)
    assert table["edit_distance"] == pytest.approx(100 * (0 + 1 / 3 + 3 / 7 + 0) / 4)
    # CER over the file, closest reference each: red/Red 1, 105/100 1, kitten/sitting 3, blue 0 -> 5 / (3+3+7+4)
    assert table["cer"] == pytest.approx(5 / 17)


def test_evaluation_by_generation_scores_captions_with_sacrebleu(tmp_path) -> None:
    """Training's eval-by-generation BLEU is sacrebleu's: (3/7) ** 0.25 for one extra word (a hand-written
    add-one-smoothed BLEU gave 0.837 here)."""
    from types import SimpleNamespace

    import numpy as np
    from PIL import Image

    from paddlemix.arguments import DatasetSource
    from paddlemix.inference.generation import evaluate_generation

    Image.new("RGB", (32, 32), (10, 20, 30)).save(tmp_path / "a.png")
    (tmp_path / "c.jsonl").write_text('{"image": "a.png", "caption": "the cat sat on the mat"}\n')
    stub = SimpleNamespace(
        encode=lambda messages, images, videos=(): {"input_ids": np.zeros(3, dtype="int64")},
        generate_encoded=lambda prompts, settings: SimpleNamespace(
            texts=["the cat sat on the mat today"], generated=SimpleNamespace(new_tokens=7, seconds=1.0,
                                                                              prefill_seconds=0.1)),
    )  # fmt: skip
    source = DatasetSource(name="coco_caption", data_files=[str(tmp_path / "c.jsonl")])
    report = evaluate_generation(stub, source, settings="greedy")
    assert report["metric"] == "bleu4" and report["score"] == pytest.approx((3 / 7) ** 0.25)


def test_ocr_scores_on_raw_text() -> None:
    """abc/abd: 1 edit of 3; ""/xy: 2 edits of 2 (distance 1.0); case counts: Ab/ab is 1 edit of 2."""
    scores = ocr_scores(["abc", "", "Ab"], ["abd", "xy", "ab"])
    assert scores["edit_distances"] == pytest.approx([1 / 3, 1.0, 0.5])
    assert scores["edit_distance"] == pytest.approx((1 / 3 + 1.0 + 0.5) / 3)
    assert scores["cer"] == pytest.approx((1 + 2 + 1) / (3 + 2 + 2))
    assert ocr_scores([], []) == {"edit_distances": [], "edit_distance": 0.0, "cer": 0.0}
