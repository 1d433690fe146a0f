"""Preference pairs: the peers' pair formats read as they are, into one `Pair` type, with reasons for bad pairs.

Accepted record shapes (detected per record; images as in SFT records: `images` / `image`, placeholders or none):

- ms-swift: `messages` ending with the chosen assistant turn, plus `rejected_response` (text), or
  `rejected_messages` (a whole conversation whose last turn is the rejected answer); `rejected_images` when the
  rejected side shows other images.
- LLaMA-Factory: sharegpt `conversations` (the prompt turns) with `chosen` / `rejected` turns
  (`{"from": "gpt", "value": ...}`), or alpaca `instruction` (+ `input`) with `chosen` / `rejected` texts.
- TRL: `prompt` (text or a list of messages) with `chosen` / `rejected` (text or a list with the assistant
  message); without `prompt`, `chosen` / `rejected` are whole conversations sharing every turn but the last.
- PaddleFormers: `chosen_response` / `rejected_response` (text or a message) after `messages`, `conversations`,
  `prompt` or `src` as the prompt; its ERNIEKit text form `src` (user turns) / `tgt` (earlier answers) with
  `response` (two answers) and `sort` (the higher one is chosen).

A top-level `system` text (ms-swift, LLaMA-Factory, ERNIEKit) becomes the system turn unless the turns hold one.

Only the final answer of each side is scored; earlier assistant turns of the prompt are context (no loss).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from paddlemix.datasets.conversation import ImageRef, Message, Sample, SampleError, check_turns
from paddlemix.datasets.sources import ROLE_ALIASES, SourceDataset, chatml_sample, record_images

PAIR_FORMATS = "ms-swift, LLaMA-Factory, TRL or PaddleFormers"


@dataclass(frozen=True)
class Pair:
    """One preference pair: a conversation up to the last user turn, and two answers to it.

    `rejected_prompt` / `rejected_images` are set only when the rejected side has its own conversation or images
    (ms-swift's `rejected_messages` / `rejected_images`); such a pair is trained as two sequences.
    """

    prompt: tuple[Message, ...]
    chosen: str
    rejected: str
    images: tuple[ImageRef, ...] = ()
    rejected_prompt: tuple[Message, ...] | None = None
    rejected_images: tuple[ImageRef, ...] | None = None
    source: str = ""
    index: int = -1

    @property
    def shared_prompt(self) -> bool:
        """True when both answers continue the same prompt and images (one sequence per pair)."""
        return self.rejected_prompt is None and self.rejected_images is None

    @property
    def messages(self) -> tuple[Message, ...]:
        """Every message of the pair (prompts and both answers), for checks of its text."""
        other = () if self.rejected_prompt is None else self.rejected_prompt
        return (*self.prompt, Message("assistant", self.chosen), *other, Message("assistant", self.rejected))

    def chosen_sample(self) -> Sample:
        return Sample((*self.prompt, Message("assistant", self.chosen)), self.images, self.source, self.index)

    def rejected_sample(self) -> Sample:
        prompt = self.prompt if self.rejected_prompt is None else self.rejected_prompt
        images = self.images if self.rejected_images is None else self.rejected_images
        return Sample((*prompt, Message("assistant", self.rejected)), images, self.source, self.index)


def _text(value: Any, side: str) -> str:
    """An answer given as text, a message dict, a list holding one assistant message, or typed text parts."""
    if isinstance(value, (list, tuple)) and value and isinstance(value[-1], dict) and "type" not in value[-1]:
        value = value[-1]
    if isinstance(value, dict):
        value = value.get("content", value.get("value"))
    if isinstance(value, (list, tuple)):
        parts = [p.get("text", "") if isinstance(p, dict) else p for p in value]
        if any(isinstance(p, dict) and p.get("type") not in (None, "text") for p in value):
            raise SampleError(f"the {side} answer holds an image (images can only be inputs)")
        value = "".join(p for p in parts if isinstance(p, str))
    if not isinstance(value, str) or not value.strip():
        raise SampleError(f"no {side} answer")
    return value


def _prompt_turns(record: dict[str, Any]) -> list[dict[str, Any]]:
    """The prompt turns of a record as {"role", "content"} dicts, whichever key holds them, after the record's
    `system` text when it has one and the turns do not."""
    turns = _turns(record)
    system = record.get("system")
    if isinstance(system, str) and system.strip() and not (turns and ROLE_ALIASES.get(turns[0]["role"]) == "system"):
        turns = [{"role": "system", "content": system}, *turns]
    return turns


def _turns(record: dict[str, Any]) -> list[dict[str, Any]]:
    if record.get("src") is not None and record.get("tgt") is not None:  # ERNIEKit: src user turns, tgt answers
        src, tgt = ([v] if isinstance(v, str) else list(v) for v in (record["src"], record["tgt"]))
        if len(src) != len(tgt) + 1:
            raise SampleError(f'"src" must hold one turn more than "tgt", got {len(src)} and {len(tgt)}')
        answers = [{"role": "assistant", "content": t} for t in tgt] + [None]
        return [turn for u, a in zip(src, answers) for turn in ({"role": "user", "content": u}, a) if turn]
    for key in ("messages", "conversations", "prompt", "src"):
        value = record.get(key)
        if value is None:
            continue
        if isinstance(value, str):
            return [{"role": "user", "content": value}]
        if isinstance(value, (list, tuple)) and value and all(isinstance(v, str) for v in value):  # src lists
            return [{"role": "user" if i % 2 == 0 else "assistant", "content": v} for i, v in enumerate(value)]
        if isinstance(value, (list, tuple)):
            return [
                {"role": t.get("role", t.get("from")), "content": t.get("content", t.get("value"))}
                if isinstance(t, dict) else {"role": None, "content": t}
                for t in value
            ]  # fmt: skip
        raise SampleError(f'"{key}" is neither text nor a list of turns')
    if record.get("instruction") is not None:  # LLaMA-Factory alpaca
        text = "\n".join(str(record[k]) for k in ("instruction", "input") if record.get(k))
        return [{"role": "user", "content": text}]
    return []


def _ranked(response: Any, sort: Any) -> tuple[Any, Any]:
    """(chosen, rejected) of ERNIEKit's `response` [a, b] and `sort` [score a, score b] (higher is chosen); each
    answer is text or a one-answer session list."""
    if not (isinstance(response, (list, tuple)) and len(response) == 2):
        raise SampleError(f'"response" must hold two answers, got {response!r:.80}')
    if not (isinstance(sort, (list, tuple)) and len(sort) == 2) or sort[0] == sort[1]:
        raise SampleError(f'"sort" must hold two different scores, got {sort!r:.80}')
    answers = []
    for answer in response:
        if isinstance(answer, (list, tuple)):
            if len(answer) != 1:
                raise SampleError("multi-turn response sessions are not supported (one answer per side)")
            answer = answer[0]
        answers.append(answer)
    return (answers[0], answers[1]) if sort[0] > sort[1] else (answers[1], answers[0])


def _is_assistant(turn: dict[str, Any]) -> bool:
    return ROLE_ALIASES.get(turn.get("role")) == "assistant"


def _raw_pair(record: dict[str, Any]) -> tuple[list[dict], Any, Any, list[dict] | None]:
    """(prompt turns, chosen answer, rejected answer, rejected prompt turns or None) of any accepted shape."""
    turns = _prompt_turns(record)
    if record.get("rejected_messages") is not None:  # ms-swift: a whole rejected conversation
        rejected_turns = _prompt_turns({"messages": record["rejected_messages"]})
        if not (turns and _is_assistant(turns[-1]) and rejected_turns and _is_assistant(rejected_turns[-1])):
            raise SampleError('"messages" and "rejected_messages" must both end with an assistant answer')
        return turns[:-1], turns[-1]["content"], rejected_turns[-1]["content"], rejected_turns[:-1]
    if "rejected_response" in record:  # ms-swift, PaddleFormers
        if "chosen_response" in record:
            chosen = record["chosen_response"]
        elif turns and _is_assistant(turns[-1]):
            chosen, turns = turns[-1]["content"], turns[:-1]
        else:
            raise SampleError('"rejected_response" without a chosen answer (last assistant turn or "chosen_response")')
        return turns, chosen, record["rejected_response"], None
    if "response" in record and "sort" in record:  # ERNIEKit: two answers ranked by `sort`
        return (turns, *_ranked(record["response"], record["sort"]), None)
    if "chosen_response" in record:
        raise SampleError('no rejected answer ("chosen_response" without "rejected_response")')
    chosen, rejected = record.get("chosen"), record.get("rejected")
    if chosen is None and turns and _is_assistant(turns[-1]) and rejected is None:
        raise SampleError('no rejected answer (the conversation ends with an answer but the record has no '
                          '"rejected_response", "rejected_messages" or "rejected")')  # fmt: skip
    if chosen is None or rejected is None:
        missing = "chosen" if chosen is None else "rejected"
        raise SampleError(f"no {missing} answer (expected a pair in the {PAIR_FORMATS} format)")
    if not turns and isinstance(chosen, list) and isinstance(rejected, list) and len(chosen) > 1:  # TRL implicit
        c, r = _prompt_turns({"messages": chosen}), _prompt_turns({"messages": rejected})
        if c[:-1] != r[:-1]:
            raise SampleError('"chosen" and "rejected" conversations differ before their last turn')
        return c[:-1], chosen[-1], rejected[-1], None
    return turns, chosen, rejected, None


def _messages(turns: list[dict], answer: str, images: list[Any], root: Path) -> tuple[list[Message], tuple]:
    """Prompt turns (earlier answers kept as context, no loss) and the answer, with the images in order."""
    messages, refs = chatml_sample({"messages": [*turns, {"role": "assistant", "content": answer}],
                                    "images": images}, root)  # fmt: skip
    if getattr(messages, "videos", ()):
        raise SampleError("preference pairs take images only (a video part in the prompt)")
    check_turns(messages)
    context = [replace(m, loss=False) if m.role == "assistant" else m for m in messages[:-1]]
    return context, refs


def read_pair(record: dict[str, Any], root: Path) -> Pair:
    """The `Pair` of one record in any accepted format; `SampleError` with the reason for a bad pair."""
    turns, chosen, rejected, rejected_turns = _raw_pair(record)
    chosen, rejected = _text(chosen, "chosen"), _text(rejected, "rejected")
    if not turns:
        raise SampleError("no prompt (user turn) before the answers")
    images = record_images(record)
    if record_images(record, "video"):
        raise SampleError("preference pairs take images only (the record has videos)")
    prompt, refs = _messages(turns, chosen, images, root)
    extra = record.get("rejected_images")
    rejected_images = list(extra) if isinstance(extra, (list, tuple)) else ([extra] if extra is not None else None)
    rejected_prompt = rejected_refs = None
    if rejected_turns is not None or rejected_images is not None:
        other_images = images if rejected_images is None else rejected_images
        rejected_prompt, rejected_refs = _messages(rejected_turns or turns, rejected, other_images, root)
    else:
        _messages(turns, rejected, images, root)  # same checks on the rejected side
    if chosen.strip() == rejected.strip() and rejected_prompt in (None, prompt) and rejected_refs in (None, refs):
        raise SampleError("chosen and rejected answers are identical")
    if rejected_prompt == prompt and rejected_refs == refs:
        rejected_prompt = rejected_refs = None  # the same prompt and images after all: one sequence
    return Pair(tuple(prompt), chosen, rejected, refs, None if rejected_prompt is None else tuple(rejected_prompt),
                rejected_refs)  # fmt: skip


class PairSourceDataset(SourceDataset):
    """All records of one source read as preference pairs; a bad pair raises `SampleError` with its reason."""

    def __getitem__(self, i: int) -> Pair:
        pair, file, local = self.read_record(i, read_pair)
        return replace(pair, source=str(file.path), index=local)


class PairSidesDataset:
    """The pairs of one source as the conversations they train: item 2k is pair k's chosen side, 2k + 1 its rejected
    side, each an SFT-shaped `Sample` whose only trained answer is the one scored, so the SFT checks and previews
    (check_data's --show / --dump, template checks) show exactly what a pair trains."""

    def __init__(self, source: Any):
        self.pairs = PairSourceDataset(source)
        self.files = self.pairs.files

    def __len__(self) -> int:
        return 2 * len(self.pairs)

    def locate(self, i: int) -> tuple[Any, int]:
        return self.pairs.locate(i // 2)

    def __getitem__(self, i: int) -> Sample:
        pair = self.pairs[i // 2]
        return pair.rejected_sample() if i % 2 else pair.chosen_sample()
