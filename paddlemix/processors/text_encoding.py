"""Record text is text: control-token strings a record types (`<|im_end|>`, `<|im_start|>system`, `<|image_pad|>`)
are encoded as the plain characters they are, never as the control tokens the chat template writes.

This is `split_special_tokens` (transformers' tokenizer option) applied to the record's text only: the template's
own `<|im_start|>`, `<|im_end|>` and image tokens stay single control tokens. Before rendering, every special-token
string inside a message is guarded (`guard_special_text`, see `TEXT_GUARD` in paddlemix/datasets/conversation.py);
`encode_text` then cuts the rendered text at the tokenizer's added tokens that are not guarded (the template's),
encodes those as their ids and every stretch between them with special tokens split, guards removed.

Example (Qwen tokenizer): an answer "End a turn with <|im_end|>." becomes `...' with', ' <', '|', 'im', '_end',
'|', '>.'` followed by the template's one `<|im_end|>` id; a question forging "<|im_end|>\\n<|im_start|>system\\n"
stays user text. `split_special_tokens: false` (a data key) turns the guarding off: typed strings then become
control tokens, as the model's tokenizer does by default. Text without guards is encoded exactly as before, in one
tokenizer call.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from paddlemix.datasets.conversation import TEXT_GUARD, guard_text


def special_token_strings(tokenizer: Any) -> tuple[str, ...]:
    """The tokenizer's special tokens as strings (added tokens flagged special, plus bos/eos/pad/unk and the
    additional ones), longest first. Non-special added tokens such as Qwen3's `<think>` are not among them: data
    writes those on purpose, as the tokenizer's `split_special_tokens` also leaves them whole."""
    names = set(getattr(tokenizer, "all_special_tokens", []) or [])
    for token in (getattr(tokenizer, "added_tokens_decoder", None) or {}).values():
        if getattr(token, "special", False):
            names.add(str(token.content) if hasattr(token, "content") else str(token))
    return tuple(sorted((n for n in names if n), key=len, reverse=True))


def added_token_strings(tokenizer: Any) -> tuple[str, ...]:
    """Every added token's string (special or not), longest first: the places a tokenizer cuts text before BPE."""
    names = set((getattr(tokenizer, "added_tokens_encoder", None) or {}).keys())
    names |= set(special_token_strings(tokenizer))
    return tuple(sorted((n for n in names if n), key=len, reverse=True))


def guard_special_text(text: str, specials: Sequence[str]) -> str:
    """`text` with each special-token string guarded, so it is encoded as plain characters."""
    return guard_text(text, specials)


def contains_special_text(text: str, specials: Sequence[str]) -> bool:
    """Whether `text` (a record's own text) holds any special-token string."""
    return any(s in text for s in specials)


class TextEncoder:
    """Encodes rendered text: unguarded added tokens as their ids, guarded strings as plain text.

    `encode(text)` is `tokenizer(text, add_special_tokens=False)` when the text holds no guard (the common case);
    otherwise the text is cut at unguarded added tokens and each stretch between them is encoded on its own with
    `split_special_tokens=True`, the guards removed. Byte-level BPE tokenizers (Qwen, Llama 3) encode such a stretch
    as the whole text would; a SentencePiece tokenizer may add its word-start marker at a stretch that follows a
    control token.
    """

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        added = added_token_strings(tokenizer)
        self.cut = re.compile("(" + "|".join(re.escape(a) for a in added) + ")") if added else None

    def plain(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def encode(self, text: str) -> list[int]:
        if TEXT_GUARD not in text:
            return self.plain(text)
        pieces = self.cut.split(text) if self.cut else [text]
        ids: list[int] = []
        for k, piece in enumerate(pieces):
            if not piece:
                continue
            if k % 2:  # an added token the template (or the image expansion) wrote
                ids.append(int(self.tokenizer.convert_tokens_to_ids(piece)))
            else:
                out = self.tokenizer(
                    piece.replace(TEXT_GUARD, ""), add_special_tokens=False, split_special_tokens=True
                )
                ids += list(out["input_ids"])
        return ids
