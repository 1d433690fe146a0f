"""Answer questions about images with a fine-tuned model, using the same chat template and encoding as training;
batched, KV-cached decoding (paddlemix/inference/decoding.py) and exact-match / BLEU-4 evaluation by generation."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from paddlemix.arguments import DatasetSource
from paddlemix.datasets.conversation import (
    IMAGE_PLACEHOLDER,
    VIDEO_PLACEHOLDER,
    Message,
    Sample,
    SampleError,
    VideoRef,
    guard_text,
    plain_text,
)
from paddlemix.datasets.sources import SourceDataset
from paddlemix.inference.decoding import (
    Generated,
    GenerationSettings,
    config_value,
    decode,
    left_pad,
    load_dtype,
    settings_for,
)
from paddlemix.inference.metrics import exact_match, sentence_bleu
from paddlemix.models import adapter_for
from paddlemix.peft.lora import base_model, load_adapter
from paddlemix.peft.merge import check_adapter_base
from paddlemix.processors.chat_template import ChatTemplate, template_for
from paddlemix.processors.sample_processor import SampleProcessor
from paddlemix.processors.template_files import trained_template_file
from paddlemix.utils.errors import UserError

logger = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 8
EMPTY_ANSWER_HINT = (
    "the model ended its answer at once (its first token was an end-of-turn/eos id); it may need more training, "
    "or another chat template (--chat_template)."
)


@dataclass
class Answers:
    """Decoded answers of a batch, in input order, with the decoding statistics behind them."""

    texts: list[str]
    generated: Generated

    @property
    def tokens_per_second(self) -> float:
        """Generated tokens per second of generation wall time (prompt pass included)."""
        return self.generated.new_tokens / max(self.generated.seconds, 1e-9)


@dataclass
class Generator:
    """A loaded model with its processor, chat template, decoding settings and the family's position rule."""

    model: Any
    tokenizer: Any
    encoder: SampleProcessor
    template: ChatTemplate
    settings: GenerationSettings
    positions: Callable[[np.ndarray, np.ndarray | None], np.ndarray]

    @classmethod
    def from_parts(
        cls,
        model: Any,
        processor: Any,
        adapter: Any,
        chat_template: str | None = None,
        model_dir: str | Path | None = None,
        max_length: int = 1 << 30,
        keep_empty_think: bool = True,
    ) -> Generator:
        """A generator around an already loaded (possibly training or LoRA-wrapped) model; decoding defaults come
        from `model_dir`'s generation_config.json (the base model's folder for an adapter), and the token that ends
        every answer of the chat template is a stop id too. Prompts longer than `max_length` tokens after image
        expansion, or than the model's `max_position_embeddings`, raise `TooLongError`."""
        config = base_model(model).config
        positions_limit = config_value(config, "max_position_embeddings")
        encoder = adapter.sample_processor(processor, min(max_length, positions_limit or max_length))
        template = template_for(processor, chat_template, keep_empty_think)
        settings = with_stop_id(settings_for(model_dir, config, processor.tokenizer), template.stop_token_id)
        return cls(model, processor.tokenizer, encoder, template, settings, adapter.position_fn(config))

    @classmethod
    def from_pretrained(
        cls,
        model_dir: str | Path,
        lora_path: str | Path | None = None,
        chat_template: str | None = None,
        device: str = "cpu",
    ) -> Generator:
        """Load model (in the checkpoint's dtype on accelerators, float32 on CPU), processor and adapter weights.
        Without `chat_template`, prompts follow the template the adapter was trained with (the one `lora_path`
        carries), else the model folder's own."""
        import paddle

        paddle.set_device(device)
        chat_template = chat_template or trained_template_file(lora_path)
        if lora_path:
            check_adapter_base(lora_path, model_dir, logger.warning)
        adapter = adapter_for(model_dir)
        processor = adapter.load_processor(model_dir)
        model = adapter.load_model(model_dir, dtype=load_dtype(model_dir, device), device=device)
        if lora_path:
            model = load_adapter(model, lora_path)
        model.eval()
        return cls.from_parts(model, processor, adapter, chat_template, model_dir)

    def encode(
        self, messages: Sequence[Message], images: Sequence[str] = (), videos: Sequence[VideoRef] = ()
    ) -> dict[str, np.ndarray]:
        """The prompt of a conversation so far (generation prompt included); raises `SampleError` for unusable
        images or videos (sampled as in training) or a prompt over the length limit."""
        return self.encoder.encode_prompt(Sample(tuple(messages), tuple(images), videos=tuple(videos)), self.template)

    def check_room(self, prompts: Sequence[dict[str, np.ndarray]], settings: GenerationSettings) -> None:
        """Raise UserError when a prompt leaves no room to answer under a `max_length` (prompt + answer, as
        transformers counts it) and no `max_new_tokens` is set; transformers raises there too."""
        if settings.max_new_tokens is not None:
            return
        longest = max((len(p["input_ids"]) for p in prompts), default=0)
        if longest >= int(settings.max_length):
            raise UserError(
                f"{settings.origin}: max_length = {settings.max_length} counts the prompt too, and a prompt here "
                f"has {longest} tokens (after image expansion), so no token is left to answer. Set max_new_tokens "
                "(e.g. --max_new_tokens 64), or raise max_length above the prompt length, or shorten the prompt."
            )

    def generate_encoded(
        self,
        prompts: Sequence[dict[str, np.ndarray]],
        settings: GenerationSettings | None = None,
        use_cache: bool = True,
        seed: int = 0,
        on_step: Callable[[list[list[int]]], None] | None = None,
    ) -> Answers:
        """Answer encoded prompts as one left-padded batch (see paddlemix/inference/decoding.py); `on_step` sees the tokens
        of every row after each decoding step."""
        settings = settings or self.settings
        self.check_room(prompts, settings)
        batch = left_pad(prompts, settings.pad_token_id, self.positions)
        rng = np.random.default_rng(seed)
        generated = decode(base_model(self.model), batch, settings, use_cache, rng, on_step)
        eos = set(settings.eos_token_ids)
        texts = [self.tokenizer.decode([t for t in row if t not in eos], skip_special_tokens=True).strip()
                 for row in generated.tokens]  # fmt: skip
        return Answers(texts, generated)

    def generate_batch(
        self, conversations: Sequence[tuple[Sequence[Message], Sequence[str]]], **overrides: Any
    ) -> Answers:
        """Answer several (messages, images) conversations in one batch; `overrides` replace settings fields."""
        settings = self.settings.with_requests(**overrides)
        return self.generate_encoded([self.encode(m, i) for m, i in conversations], settings)

    def generate(self, messages: Sequence[Message], images: Sequence[str] = (), **overrides: Any) -> str:
        """The model's answer to the conversation so far (settings from generation_config.json unless overridden,
        e.g. `max_new_tokens=8`, `do_sample=False`)."""
        return self.generate_batch([(messages, images)], **overrides).texts[0]

    def answer(self, question: str, images: Sequence[str] = (), **overrides: Any) -> str:
        """Answer one question; images without an `<image>` placeholder go in front of the question."""
        return self.generate([question_message(question, images)], images, **overrides)


def with_stop_id(settings: GenerationSettings, stop_id: int | None) -> GenerationSettings:
    """`settings` with `stop_id` (the token that ends every trained answer) among the eos ids."""
    if stop_id is None or stop_id in settings.eos_token_ids:
        return settings
    return replace(settings, eos_token_ids=(*settings.eos_token_ids, int(stop_id)))


def question_message(question: str, images: Sequence[str] = (), videos: Sequence[Any] = ()) -> Message:
    """A user turn asking `question`, with `<image>` (then `<video>`) placeholders in front when the question has
    none; without images (videos), an `<image>` (`<video>`) in the question is text."""
    if not images:
        question = guard_text(question, (IMAGE_PLACEHOLDER,))
    elif IMAGE_PLACEHOLDER not in question:
        question = IMAGE_PLACEHOLDER * len(images) + question
    if not videos:
        question = guard_text(question, (VIDEO_PLACEHOLDER,))
    elif VIDEO_PLACEHOLDER not in question:
        question = VIDEO_PLACEHOLDER * len(videos) + question
    return Message("user", question)


@dataclass
class _Prompt:
    """One record ready to answer: its index in the source, the encoded prompt and the reference answer."""

    index: int
    encoded: dict[str, np.ndarray]
    reference: str


def _prompts(
    generator: Generator, data: SourceDataset, count: int, skipped: list[dict[str, Any]]
) -> Iterator[_Prompt]:
    """Encoded prompts of the first `count` records; a record that cannot be read or encoded (missing or broken
    image, too long, no assistant turn, ...) is appended to `skipped` with its reason instead."""
    for i in range(count):
        try:
            sample = data[i]
            last = max(k for k, m in enumerate(sample.messages) if m.role == "assistant")
            reference = plain_text(sample.messages[last].content)
            yield _Prompt(i, generator.encode(sample.messages[:last], sample.images, sample.videos), reference)
        except Exception as err:  # noqa: BLE001 - any failure of one record is a skip, never the end of a run
            skipped.append({"index": i, "reason": str(err) if isinstance(err, SampleError) else repr(err)})


def _batches(prompts: Iterator[_Prompt], size: int) -> Iterator[list[_Prompt]]:
    batch: list[_Prompt] = []
    for prompt in prompts:
        batch.append(prompt)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _answer(
    generator: Generator, batch: list[_Prompt], settings: GenerationSettings, skipped: list[dict[str, Any]]
) -> list[tuple[_Prompt, str, Generated]]:
    """(prompt, answer, its batch's decoding statistics) of each record of `batch`; when the batch fails, its
    records are answered one by one and those that fail alone are skipped."""
    try:
        answers = generator.generate_encoded([p.encoded for p in batch], settings)
        return [(p, text, answers.generated) for p, text in zip(batch, answers.texts)]
    except UserError:  # the settings leave no room to answer: every record would fail alike
        raise
    except Exception as err:  # noqa: BLE001
        if len(batch) == 1:
            skipped.append({"index": batch[0].index, "reason": f"generation failed: {err!r}"})
            return []
    return [done for p in batch for done in _answer(generator, [p], settings, skipped)]


def transcription_scores(results: list[dict[str, Any]]) -> dict[str, float]:
    """Mean normalised edit distance and CER of the answers (`metrics.ocr_scores`), each record's distance added
    to it as `edit_distance`; {} when rapidfuzz (the eval extra) is missing, said once in the log."""
    from paddlemix.inference.metrics import ocr_scores

    try:
        scores = ocr_scores([r["prediction"] for r in results], [r["reference"] for r in results])
    except UserError as err:
        logger.info("edit distance and CER left out: %s", err)
        return {}
    for record, distance in zip(results, scores["edit_distances"]):
        record["edit_distance"] = round(distance, 6)
    return {"edit_distance": scores["edit_distance"], "cer": scores["cer"]}


def evaluate_generation(
    generator: Generator,
    source: DatasetSource,
    limit: int | None = None,
    max_new_tokens: int = 16,
    batch_size: int = DEFAULT_BATCH_SIZE,
    settings: GenerationSettings | None = None,
) -> dict[str, Any]:
    """Answer the last assistant turn of each record from the turns before it, `batch_size` records at a time
    (greedy unless `settings` say otherwise); exact match for chat and VQA sources, sacrebleu's sentence BLEU-4 for caption sources (metrics.py),
    and for chat and VQA sources also the mean normalised edit distance and the CER (`transcription_scores`).

    Records that fail (unreadable, missing image, too long, a failing generation) are skipped and listed under
    `skipped_records` with their reason; they do not count in the scores.
    """
    data = SourceDataset(source)
    caption = source.name == "coco_caption"
    settings = settings or generator.settings.with_overrides(max_new_tokens=max_new_tokens, do_sample=False)
    skipped: list[dict[str, Any]] = []
    results, runs = [], {}
    count = len(data) if limit is None else min(limit, len(data))
    for batch in _batches(_prompts(generator, data, count, skipped), max(batch_size, 1)):
        for prompt, prediction, generated in _answer(generator, batch, settings, skipped):
            runs[id(generated)] = generated
            reference = prompt.reference
            score = sentence_bleu(prediction, [reference]) if caption else exact_match(prediction, [reference])
            results.append({"index": prompt.index, "prediction": prediction, "reference": reference,
                            "score": score, "correct": score == 1.0})  # fmt: skip
    tokens = sum(g.new_tokens for g in runs.values())
    seconds = sum(g.seconds for g in runs.values())
    prompt_seconds = sum(g.prefill_seconds for g in runs.values())
    if skipped:
        logger.warning("%s: %d of %d records skipped in generation, e.g. #%d: %s", source.data_files[0],
                       len(skipped), count, skipped[0]["index"], skipped[0]["reason"])  # fmt: skip
    correct = sum(r["correct"] for r in results)
    mean = sum(r["score"] for r in results) / max(len(results), 1)
    ocr = transcription_scores(results) if not caption else {}
    return {"metric": "bleu4" if caption else "accuracy", "score": mean, "accuracy": correct / max(len(results), 1),
            **ocr, "correct": correct, "total": len(results), "results": sorted(results, key=lambda r: r["index"]),
            "skipped": len(skipped), "skipped_records": skipped, "new_tokens": tokens, "seconds": seconds,
            "prompt_seconds": prompt_seconds, "tokens_per_second": tokens / max(seconds, 1e-9)}  # fmt: skip


def evaluate_exact_match(
    generator: Generator,
    data_files: Sequence[str],
    limit: int | None = None,
    max_new_tokens: int = 16,
    batch_size: int = DEFAULT_BATCH_SIZE,
    settings: GenerationSettings | None = None,
) -> dict[str, Any]:
    """Exact-match accuracy of the last assistant turn of each chatml record, answered from the turns before it."""
    source = DatasetSource(name="chatml_dataset", data_files=list(data_files))
    return evaluate_generation(generator, source, limit, max_new_tokens, batch_size, settings)
