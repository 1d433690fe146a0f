"""Answer questions about images with a fine-tuned model, using the same chat template and encoding as training."""

from __future__ import annotations

import logging
import math
import string
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from paddlemix.arguments import DatasetSource
from paddlemix.datasets.conversation import IMAGE_PLACEHOLDER, Message, Sample
from paddlemix.datasets.sources import SourceDataset
from paddlemix.models import adapter_for
from paddlemix.peft.lora import load_adapter
from paddlemix.processors.chat_template import ChatTemplate, template_for
from paddlemix.processors.sample_processor import SampleProcessor

logger = logging.getLogger(__name__)


@dataclass
class Generator:
    """A loaded model with its processor and chat template."""

    model: Any
    tokenizer: Any
    encoder: SampleProcessor
    template: ChatTemplate

    @classmethod
    def from_parts(cls, model: Any, processor: Any, adapter: Any, chat_template: str | None = None) -> Generator:
        """A generator around an already loaded (possibly training) model."""
        encoder = adapter.sample_processor(processor, 1 << 30)
        return cls(model, processor.tokenizer, encoder, template_for(processor, chat_template))

    @classmethod
    def from_pretrained(
        cls,
        model_dir: str | Path,
        lora_path: str | Path | None = None,
        chat_template: str | None = None,
        device: str = "cpu",
    ) -> Generator:
        import paddle

        paddle.set_device(device)
        adapter = adapter_for(model_dir)
        processor = adapter.load_processor(model_dir)
        model = adapter.load_model(model_dir, device=device)
        if lora_path:
            model = load_adapter(model, lora_path)
        model.eval()
        return cls.from_parts(model, processor, adapter, chat_template)

    def generate(
        self,
        messages: Sequence[Message],
        images: Sequence[str] = (),
        max_new_tokens: int = 32,
        temperature: float = 0.0,
        top_p: float = 1.0,
    ) -> str:
        """The model's answer to the conversation so far (greedy unless temperature > 0)."""
        import paddle

        inputs = self.encoder.encode_prompt(Sample(tuple(messages), tuple(images)), self.template)
        tensors = {k: paddle.to_tensor(v[None] if k == "input_ids" else v) for k, v in inputs.items()}
        sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p} if temperature > 0 else {}
        with paddle.no_grad():
            new_ids = self.model.generate(**tensors, max_new_tokens=max_new_tokens, **sampling)[0]
        return self.tokenizer.decode(new_ids[0].tolist(), skip_special_tokens=True).strip()

    def answer(self, question: str, images: Sequence[str] = (), **kwargs: Any) -> str:
        """Answer one question; images without an `<image>` placeholder go in front of the question."""
        if images and IMAGE_PLACEHOLDER not in question:
            question = IMAGE_PLACEHOLDER * len(images) + question
        return self.generate([Message("user", question)], images, **kwargs)


def normalize(text: str) -> str:
    """Lowercase, trim and drop surrounding punctuation, as VQA exact-match scoring does."""
    return text.strip().lower().strip(string.punctuation + " ")


def bleu4(prediction: str, reference: str) -> float:
    """Sentence BLEU-4 with add-one smoothing on the higher orders and the brevity penalty (whitespace tokens)."""
    hyp, ref = normalize(prediction).split(), normalize(reference).split()
    if not hyp:
        return 0.0
    log_precision = 0.0
    for n in range(1, 5):
        grams = Counter(tuple(hyp[i : i + n]) for i in range(len(hyp) - n + 1))
        ref_grams = Counter(tuple(ref[i : i + n]) for i in range(len(ref) - n + 1))
        overlap = sum(min(c, ref_grams[g]) for g, c in grams.items())
        total = max(sum(grams.values()), 0)
        smooth = 0 if n == 1 else 1
        if overlap + smooth == 0:
            return 0.0
        log_precision += math.log((overlap + smooth) / (total + smooth)) / 4
    brevity = min(0.0, 1 - len(ref) / len(hyp))
    return math.exp(brevity + log_precision)


def evaluate_generation(
    generator: Generator, source: DatasetSource, limit: int | None = None, max_new_tokens: int = 16
) -> dict[str, Any]:
    """Answer the last assistant turn of each record from the turns before it; exact match for chat and VQA
    sources, BLEU-4 for caption sources."""
    data = SourceDataset(source)
    caption = source.name == "coco_caption"
    results = []
    for i in range(len(data) if limit is None else min(limit, len(data))):
        sample = data[i]
        last = max(k for k, m in enumerate(sample.messages) if m.role == "assistant")
        prediction = generator.generate(sample.messages[:last], sample.images, max_new_tokens=max_new_tokens)
        reference = sample.messages[last].content
        score = bleu4(prediction, reference) if caption else float(normalize(prediction) == normalize(reference))
        results.append({"index": i, "prediction": prediction, "reference": reference, "score": score,
                        "correct": score == 1.0})  # fmt: skip
    correct = sum(r["correct"] for r in results)
    mean = sum(r["score"] for r in results) / max(len(results), 1)
    return {"metric": "bleu4" if caption else "accuracy", "score": mean, "accuracy": correct / max(len(results), 1),
            "correct": correct, "total": len(results), "results": results}  # fmt: skip


def evaluate_exact_match(
    generator: Generator, data_files: Sequence[str], limit: int | None = None, max_new_tokens: int = 16
) -> dict[str, Any]:
    """Exact-match accuracy of the last assistant turn of each chatml record, answered from the turns before it."""
    source = DatasetSource(name="chatml_dataset", data_files=list(data_files))
    return evaluate_generation(generator, source, limit, max_new_tokens)
