"""Check that a chat template trains what inference asks: the training ids (encoded segment by segment, labels
per answer) equal the ids of the whole rendered text, and at every answer the inference prompt's ids are exactly
the training ids before it, with the answer's labels starting right there.

A mismatch means the model sees prompts at inference that it never saw in training (e.g. `…ASSISTANT: ` trained,
`…ASSISTANT:` asked; `' '`, `'red'` trained where the text tokenizes as `' red'`), which no loss curve shows.
Run at training start on a probe conversation and in `check_data` on the first records of each source. A template
that rewrites earlier turns (Qwen3's drops reasoning from past answers) renders a past answer otherwise than the
answer being asked; such answers are trained as the whole conversation renders them and not compared with a
prompt.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from paddlemix.datasets.conversation import Message, Sample
from paddlemix.processors.chat_template import ChatTemplate
from paddlemix.processors.sample_processor import IGNORE_INDEX, SampleProcessor

# Two text-only turns, the second answer with a space and punctuation: the boundaries a template gets wrong.
PROBE_CONVERSATION = (
    Message("user", "What color is the circle?"),
    Message("assistant", "red"),
    Message("user", "And the square?"),
    Message("assistant", "A blue square."),
)


def _shown(tokenizer: Any, ids: Sequence[int]) -> str:
    return repr([tokenizer.decode([i]) for i in ids])


def _first_difference(a: Sequence[int], b: Sequence[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def _training_ids(
    encoder: SampleProcessor, sample: Sample, template: ChatTemplate
) -> tuple[list[int], list[int], list[str]]:
    """(ids, unshifted labels, pieces of rendered text) of a sample as training encodes it, images counted from
    headers. The text is cut only where an answer starts after a space the generation prompt ends with (`User: q
    Assistant: ` + `red`): there the template itself splits the text, as every inference prompt does."""
    grids = [encoder.vision.grid_for_size(*encoder.reader.size(r)) for r in sample.images]
    _, video_texts = encoder.videos(sample.videos, decode=False)
    segments = encoder.training_segments(sample, template)
    ids, labels = encoder._encode(sample, segments, {"image_grid_thw": grids}, video_texts)
    counts = [encoder.vision.count(g) for g in grids]
    chunks = [""]
    for i, (text, label) in enumerate(segments):
        if label and i and segments[i - 1][0][-1:] in (" ", "\t"):
            chunks.append("")
        chunks[-1] += text
    return ids, labels, [encoder.expand(encoder.expand_videos(chunk, video_texts), counts) for chunk in chunks]


def encoding_mismatch(encoder: SampleProcessor, template: ChatTemplate, sample: Sample) -> str | None:
    """What differs between the training ids of `sample` and the whole text's ids or an inference prompt's ids,
    in one sentence, or None when all agree."""
    tokenizer = encoder.tokenizer
    ids, labels, chunks = _training_ids(encoder, sample, template)
    whole = encoder.leading_ids(chunks[0]) + [i for chunk in chunks for i in encoder.encode_text(chunk)]
    if whole != ids:
        at = _first_difference(ids, whole)
        return (
            f"the training ids differ from the tokenization of the whole rendered text at token {at}: training has "
            f"{_shown(tokenizer, ids[at : at + 4])}, the whole text {_shown(tokenizer, whole[at : at + 4])}"
        )
    starts = [i for i in range(len(labels)) if labels[i] != IGNORE_INDEX and (i == 0 or labels[i - 1] == IGNORE_INDEX)]
    turns = [k for k, m in enumerate(sample.messages) if m.role == "assistant" and m.loss and m.content.strip()]
    rendered = "".join(text for text, _ in encoder.training_segments(sample, template))
    for k, start in zip(turns, starts):
        alone = Sample(sample.messages[: k + 1], sample.images, videos=sample.videos)
        if k != turns[-1] and not rendered.startswith(
            "".join(t for t, _ in encoder.training_segments(alone, template))
        ):
            continue  # a template that rewrites history (Qwen3 thinking) renders this turn otherwise once it is past
        earlier = Sample(sample.messages[:k], sample.images, videos=sample.videos)
        prompt = encoder.prompt_ids(earlier, template)  # from headers: nothing decoded
        if prompt != ids[: len(prompt)] or len(prompt) != start:
            at = _first_difference(ids, prompt)
            return (
                f"the inference prompt of answer {turns.index(k) + 1} is not the training text before it: the prompt "
                f"has {len(prompt)} tokens ending {_shown(tokenizer, prompt[-4:])}, training labels the answer from "
                f"token {start} (first difference at token {at}: training {_shown(tokenizer, ids[at : at + 3])}, "
                f"prompt {_shown(tokenizer, prompt[at : at + 3])})"
            )
    return None


def template_report(
    encoder: SampleProcessor, template: ChatTemplate, where: str, samples: Sequence[Sample] = ()
) -> str | None:
    """One paragraph when the probe conversation or one of `samples` encodes differently for training and
    inference (see the module docstring), else None. Samples that cannot be encoded are left to the skip checks."""
    for index, sample in enumerate([Sample(PROBE_CONVERSATION, ()), *samples]):
        try:
            problem = encoding_mismatch(encoder, template, sample)
        except Exception:  # noqa: BLE001 - a record that does not encode is reported by the skip checks
            continue
        if problem:
            what = "a probe conversation" if index == 0 else f"record #{index - 1}"
            return (
                f"{where}: for {what}, {problem}. The model would be asked in a form it was not trained on. Use a "
                "chat template whose answers start after a newline, a space or a special token and end with an "
                'end-of-turn token, or set the source\'s "chat_template" to such a file.'
            )
    return None
