"""Pair readers: each peer's file shape gives the same `Pair`; bad pairs are skipped with their reason."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from paddlemix.arguments import DatasetSource
from paddlemix.datasets.conversation import Message, SampleError
from paddlemix.datasets.pairs import PairSourceDataset, read_pair
from paddlemix.testing.pairs import PAIR_FORMATS, write_bad_pairs, write_shape_pairs


def pairs_of(path: Path) -> PairSourceDataset:
    return PairSourceDataset(DatasetSource(name="chatml_dataset", data_files=[str(path)]))


@pytest.mark.parametrize("fmt", PAIR_FORMATS)
def test_each_peer_format_reads_to_the_same_pair(shapes_data: dict, tmp_path: Path, fmt: str) -> None:
    path = write_shape_pairs(shapes_data["train"], tmp_path / fmt / "pairs.jsonl", fmt, seed=3)
    first = json.loads(shapes_data["train"].read_text().splitlines()[0])
    pair = pairs_of(path)[0]
    assert pair.prompt == (Message("user", first["messages"][0]["content"]),)
    assert pair.chosen == first["messages"][1]["content"]
    assert pair.rejected != pair.chosen and pair.rejected
    assert [Path(p).resolve() for p in pair.images] == [(shapes_data["train"].parent / first["images"][0]).resolve()]
    assert pair.shared_prompt
    assert len(pairs_of(path)) == len(shapes_data["train"].read_text().splitlines())


def test_more_record_shapes(tmp_path: Path) -> None:
    user = {"role": "user", "content": "Q"}
    # TRL implicit prompt: whole conversations that share every turn but the last
    trl = read_pair({"chosen": [user, {"role": "assistant", "content": "A"}],
                     "rejected": [user, {"role": "assistant", "content": "B"}]}, tmp_path)  # fmt: skip
    assert (trl.prompt, trl.chosen, trl.rejected) == ((Message("user", "Q"),), "A", "B")
    # LLaMA-Factory alpaca
    alpaca = read_pair({"instruction": "Q", "input": "x", "chosen": "A", "rejected": "B"}, tmp_path)
    assert alpaca.prompt == (Message("user", "Q\nx"),)
    # multi-turn prompt: the earlier answer is context, never scored
    multi = read_pair({"messages": [user, {"role": "assistant", "content": "A1"}, {"role": "user", "content": "Q2"},
                                    {"role": "assistant", "content": "A"}], "rejected_response": "B"}, tmp_path)  # fmt: skip
    assert multi.prompt[1] == Message("assistant", "A1", loss=False)
    # ms-swift: the rejected side shows its own image -> two sequences
    swift = read_pair({"messages": [{"role": "user", "content": "<image>Q"}, {"role": "assistant", "content": "A"}],
                       "images": ["a.png"], "rejected_response": "A", "rejected_images": ["b.png"]}, tmp_path)  # fmt: skip
    assert not swift.shared_prompt and swift.rejected_images == (str(tmp_path / "b.png"),)
    # ms-swift rejected_messages with the same prompt is one sequence again
    same = read_pair({"messages": [user, {"role": "assistant", "content": "A"}],
                      "rejected_messages": [user, {"role": "assistant", "content": "B"}]}, tmp_path)  # fmt: skip
    assert same.shared_prompt and same.rejected == "B"
    # PaddleFormers: chosen_response / rejected_response after the prompt messages
    pf = read_pair({"messages": [user], "chosen_response": {"role": "assistant", "content": "A"},
                    "rejected_response": "B"}, tmp_path)  # fmt: skip
    assert (pf.chosen, pf.rejected) == ("A", "B")


def test_bad_pairs_raise_their_reason(shapes_data: dict, tmp_path: Path) -> None:
    image = sorted((shapes_data["train"].parent / "images").glob("*.png"))[0]
    path, reasons = write_bad_pairs(image, tmp_path / "bad.jsonl")
    data = pairs_of(path)
    for i, reason in enumerate(reasons):
        if not reason or reason == "max_length":  # too long is found when encoding (test_dpo_data)
            data[i]
            continue
        with pytest.raises(SampleError, match=reason):
            data[i]


def test_paddleformers_erniekit_text_pairs_and_system_texts(tmp_path: Path) -> None:
    """PaddleFormers' own DPO text records (src / tgt / response / sort, as its convertor reads them), its
    converted form (chosen_response / rejected_response as lists of messages), and a top-level system text."""
    ernie = read_pair({"src": ["Q1", "Q2"], "tgt": ["A1"], "response": ["bad", "good"], "sort": [0, 1],
                       "system": "Be brief."}, tmp_path)  # fmt: skip
    assert ernie.prompt == (Message("system", "Be brief."), Message("user", "Q1"),
                            Message("assistant", "A1", loss=False), Message("user", "Q2"))  # fmt: skip
    assert (ernie.chosen, ernie.rejected) == ("good", "bad")
    sessions = read_pair({"src": "Q", "tgt": [], "response": [["first"], ["second"]], "sort": [2, 1]}, tmp_path)
    assert (sessions.chosen, sessions.rejected) == ("first", "second")
    converted = read_pair({"messages": [{"role": "user", "content": "Q"}],
                           "chosen_response": [{"role": "assistant", "content": "A"}],
                           "rejected_response": [{"role": "assistant", "content": "B"}]}, tmp_path)  # fmt: skip
    assert (converted.chosen, converted.rejected) == ("A", "B")
    for bad, reason in (({"src": "Q", "tgt": [], "response": ["a", "b"], "sort": [1, 1]}, "two different scores"),
                        ({"src": "Q", "tgt": [], "response": ["a"], "sort": [1, 0]}, "two answers"),
                        ({"src": ["Q"], "tgt": ["A"], "response": ["a", "b"], "sort": [1, 0]}, "one turn more"),
                        ({"src": "Q", "tgt": [], "response": [["a", "q", "b"], ["c"]], "sort": [1, 0]},
                         "multi-turn")):  # fmt: skip
        with pytest.raises(SampleError, match=reason):
            read_pair(bad, tmp_path)
