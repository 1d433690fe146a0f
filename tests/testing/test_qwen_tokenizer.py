"""tiktoken rank table -> Hugging Face byte-level BPE, on a hand-made table."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from paddlemix.testing.qwen_tokenizer import bpe_from_ranks, byte_to_unicode, qwen_tokenizer, read_tiktoken


def test_byte_to_unicode_is_gpt2s_map() -> None:
    mapping = byte_to_unicode()
    assert len(set(mapping.values())) == 256
    assert mapping[ord(" ")] == "Ġ" and mapping[ord("\n")] == "Ċ" and mapping[ord("a")] == "a"


def test_merges_follow_the_rank_of_the_merged_token(tmp_path: Path) -> None:
    table = {b"a": 0, b"b": 1, b"c": 2, b" ": 3, b"bc": 4, b"ab": 5, b"abc": 6, b" a": 7}
    path = tmp_path / "t.tiktoken"
    path.write_text("".join(f"{base64.b64encode(k).decode()} {v}\n" for k, v in table.items()))
    ranks = read_tiktoken(path)
    assert ranks == table
    vocab, merges = bpe_from_ranks(ranks)
    assert vocab["Ġa"] == 7 and vocab["abc"] == 6
    # "abc" can be made as a+bc or ab+c: both listed, after the merges of lower-ranked results.
    assert merges == [("b", "c"), ("a", "b"), ("a", "bc"), ("ab", "c"), ("Ġ", "a")]
    with pytest.raises(ValueError, match="151643"):
        qwen_tokenizer(path, ())
