"""Turn one `Sample` into model inputs: token ids, per-turn labels, pixel values and image grids.

Images are decoded here (in dataloader workers), each `<image>` placeholder becomes the model's vision tokens
repeated once per visual token, and only assistant answers carry labels. Special-token strings a record types
stay text unless `split_special_tokens` is off (paddlemix/processors/text_encoding.py). The ids start with the tokens the
tokenizer puts first (Llama's BOS) unless the rendered text already does, as Hugging Face processors encode a
rendered chat; prompts for inference are the training ids of the text before an answer.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from paddlemix.datasets.conversation import (
    IMAGE_PLACEHOLDER,
    VIDEO_PLACEHOLDER,
    ImageRef,
    Message,
    Sample,
    SampleError,
    TooLongError,
    VideoRef,
)
from paddlemix.processors.chat_template import ChatTemplate
from paddlemix.processors.images import ImageReader
from paddlemix.processors.text_encoding import TextEncoder, guard_special_text, special_token_strings
from paddlemix.processors.video import DEFAULT_MAX_VIDEO_SECONDS, VideoPlan, VideoReader
from paddlemix.processors.video_sampling import VideoOptions
from paddlemix.processors.video_tokens import PatchLayout, VideoTokens

IGNORE_INDEX = -100
PLANS_KEPT = 256  # video plans an encoder remembers (see SampleProcessor.plan_video)


@dataclass(frozen=True)
class VisionTokens:
    """How a model writes an image into text: the placeholder text, the token repeated per visual token, the
    patch grid (t, h, w) an image of a given width and height becomes (for lengths without decoding pixels), and
    tokens per image beyond the merged patches (LLaVA's class token with the "full" feature strategy)."""

    placeholder: str
    image_token: str
    merge_size: int
    grid_for_size: Callable[[int, int], tuple[int, int, int]]
    extra_tokens: int = 0
    video: VideoTokens | None = None  # None: the family takes no video
    why_no_video: str = "this model family takes no video input"

    def count(self, grid_thw: Sequence[int]) -> int:
        """Visual tokens for one image of `grid_thw` patches after spatial merging."""
        t, h, w = (int(x) for x in grid_thw)
        return t * h * w // (self.merge_size**2) + self.extra_tokens


def without_empty_answers(messages: Sequence[Message]) -> list[Message]:
    """The turns with empty (or blank) answers kept as context but not trained, so no model learns to say nothing;
    raises `SampleError` when no trained answer is left."""
    out = [Message(m.role, m.content, False) if m.role == "assistant" and not m.content.strip() else m
           for m in messages]  # fmt: skip
    emptied = any(a.loss and not b.loss for a, b in zip(messages, out))
    if emptied and not any(m.role == "assistant" and m.loss for m in out):
        raise SampleError("every trained assistant answer is empty")
    return out


def prompt_segments(segments: Sequence[tuple[str, bool]]) -> list[tuple[str, bool]]:
    """The segments of a generation prompt, all as context."""
    return [(text, False) for text, _ in segments]


class SampleProcessor:
    """Callable that encodes a `Sample`; raises `SampleError` with a reason for samples that must be skipped.

    `reader` opens the sample's images (pixel limit, URL cache); the data settings of a run replace the default.
    `split_special_tokens` (default on) encodes special-token strings in message text as plain text.
    """

    def __init__(
        self, tokenizer: Any, image_processor: Any, vision: VisionTokens, max_length: int,
        reader: ImageReader | None = None, split_special_tokens: bool = True,
    ):  # fmt: skip
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.vision = vision
        self.max_length = max_length
        self.reader = reader or ImageReader()
        self.split_special_tokens = split_special_tokens
        self.special_tokens = special_token_strings(tokenizer)
        self.text_encoder = TextEncoder(tokenizer)
        self.layout = PatchLayout.of(image_processor) if vision.video is not None else None
        self.video_options = VideoOptions()  # the run's defaults (video_fps, video_maxlen, video_resolution)
        self.max_video_seconds: float | None = DEFAULT_MAX_VIDEO_SECONDS
        self._plans: OrderedDict[tuple, VideoPlan] = OrderedDict()

    @property
    def video_reader(self) -> VideoReader:
        """Reads videos with this encoder's image reader (frame lists, URLs, pixel limit) and the run's options."""
        assert self.layout is not None
        return VideoReader(self.layout.factor, self.video_options, self.reader, self.max_video_seconds,
                           self.reader.max_pixels)  # fmt: skip

    def plan_video(self, ref: VideoRef) -> VideoPlan:
        """A video's plan from its headers (`VideoReader.plan`), remembered for the last PLANS_KEPT videos under the
        settings it was made with: a record's length, its video summary and the template check plan the same
        clips, and each plan opens the file (a container whose header counts no frames has its packets counted)."""
        key = (ref, self.video_options, self.max_video_seconds, self.reader, self.layout.factor)
        plan = self._plans.get(key)
        if plan is None:
            plan = self._plans[key] = self.video_reader.plan(ref)
            if len(self._plans) > PLANS_KEPT:
                self._plans.popitem(last=False)
        else:
            self._plans.move_to_end(key)
        return plan

    def images(self, refs: Sequence[ImageRef]) -> dict[str, np.ndarray]:
        if not refs:
            return {}
        out = self.image_processor(images=[self.reader.load(r) for r in refs], return_tensors="np")
        return {"pixel_values": np.asarray(out["pixel_values"]), "image_grid_thw": np.asarray(out["image_grid_thw"])}

    def _check_videos(self, videos: Sequence[VideoRef]) -> None:
        if videos and self.vision.video is None:
            raise SampleError(f"record has {len(videos)} video(s): {self.vision.why_no_video}")

    def videos(self, refs: Sequence[VideoRef], decode: bool = True) -> tuple[dict[str, np.ndarray], list[str]]:
        """Model inputs of the videos (`pixel_values_videos` float32 [N, C*tp*p*p], `video_grid_thw` int64 [V, 3],
        Qwen2.5-VL's `second_per_grid_ts` float32 [V]) and the text each becomes; `decode` False plans from
        headers only (the inputs then hold the grids alone)."""
        self._check_videos(refs)
        if not refs:
            return {}, []
        assert self.layout is not None and self.vision.video is not None
        pixels, grids, seconds, texts = [], [], [], []
        for ref in refs:
            if decode:
                frames, plan = self.video_reader.load(ref)
                patches, grid = self.layout.patches(frames)
                pixels.append(patches)
            else:
                plan = self.plan_video(ref)
                grid = self.layout.grid(plan)
            grids.append(grid)
            seconds.append(self.layout.temporal_patch_size / plan.sample_fps)
            texts.append(self.vision.video.text(grid, plan, self.layout))
        out = {"video_grid_thw": np.asarray(grids, dtype="int64")}
        if pixels:
            out["pixel_values_videos"] = np.concatenate(pixels)
        if self.vision.video.seconds_per_grid:
            out["second_per_grid_ts"] = np.asarray(seconds, dtype="float32")
        return out, texts

    def video_summary(self, sample: Sample) -> tuple[int, int]:
        """(sampled frames, video tokens) of a sample's videos, from headers only; (0, 0) without videos."""
        self._check_videos(sample.videos)
        frames = tokens = 0
        for ref in sample.videos:
            plan = self.plan_video(ref)
            t, h, w = self.layout.grid(plan)
            frames += len(plan.indices)
            tokens += t * h * w // self.layout.merge_size**2
        return frames, tokens

    def message_text(self, content: str) -> str:
        """A message's text for rendering: special-token strings it types guarded (unless `split_special_tokens` is
        off), then each `<image>` replaced with the model's placeholder text (one image token, expanded after
        rendering)."""
        pieces = content.split(IMAGE_PLACEHOLDER)
        if self.split_special_tokens:
            pieces = [guard_special_text(piece, self.special_tokens) for piece in pieces]
        if self.vision.video is not None:
            pieces = [self.vision.video.placeholder.join(piece.split(VIDEO_PLACEHOLDER)) for piece in pieces]
        return self.vision.placeholder.join(pieces)

    def expand_videos(self, text: str, texts: list[str]) -> str:
        """Replace each video placeholder with its video's text (`videos`), in order."""
        if self.vision.video is None:
            return text
        pieces = text.split(self.vision.video.placeholder)
        if len(pieces) - 1 > len(texts):
            raise SampleError("more video placeholders in the rendered text than videos")
        return pieces[0] + "".join(texts.pop(0) + piece for piece in pieces[1:])

    def with_vision_tokens(self, messages: Sequence[Message]) -> list[Message]:
        return [dataclasses.replace(m, content=self.message_text(m.content)) for m in messages]

    def expand(self, text: str, counts: list[int]) -> str:
        """Repeat the image token of each placeholder by that image's visual-token count, in order."""
        pieces = text.split(self.vision.image_token)
        if len(pieces) - 1 > len(counts):
            raise SampleError("more image tokens in the rendered text than images")
        out = [pieces[0]]
        for piece in pieces[1:]:
            out.append(self.vision.image_token * counts.pop(0) + piece)
        return "".join(out)

    def encode_text(self, text: str) -> list[int]:
        return self.text_encoder.encode(text)

    def leading_ids(self, text: str) -> list[int]:
        """The ids the tokenizer puts before a text it encodes with special tokens (Llama's BOS; none for Qwen),
        or none when `text` starts with the bos token already, as transformers' processors decide."""
        bos = getattr(self.tokenizer, "bos_token", None)
        if bos and text.startswith(bos):
            return []
        if not hasattr(self, "_leading"):
            plain = self.encode_text("a")
            full = list(self.tokenizer("a", add_special_tokens=True)["input_ids"])
            at = next((i for i in range(len(full)) if full[i : i + len(plain)] == plain), 0)
            self._leading = full[:at]
        return list(self._leading)

    def _encode(
        self, sample: Sample, segments: list[tuple[str, bool]], vision: dict, video_texts: Sequence[str] = ()
    ) -> tuple[list[int], list[int]]:
        counts = [self.vision.count(g) for g in vision.get("image_grid_thw", [])]
        video_texts = list(video_texts)
        input_ids: list[int] = self.leading_ids(segments[0][0] if segments else "")
        labels: list[int] = [IGNORE_INDEX] * len(input_ids)
        for text, is_label in segments:
            ids = self.encode_text(self.expand(self.expand_videos(text, video_texts), counts))
            input_ids += ids
            labels += ids if is_label else [IGNORE_INDEX] * len(ids)
        if counts:
            raise SampleError(f"{len(counts)} images have no placeholder in the rendered text")
        if video_texts:
            raise SampleError(f"{len(video_texts)} videos have no placeholder in the rendered text")
        if len(input_ids) > self.max_length:
            expanded = " and ".join(k for k, refs in (("image", sample.images), ("video", sample.videos)) if refs)
            raise TooLongError(len(input_ids), self.max_length, expanded or "image")
        return input_ids, labels

    def training_segments(self, sample: Sample, template: ChatTemplate) -> list[tuple[str, bool]]:
        """The rendered (text, is_label) segments a sample trains on; empty answers are not trained."""
        return template.segments(self.with_vision_tokens(without_empty_answers(sample.messages)))

    def __call__(self, sample: Sample, template: ChatTemplate) -> dict[str, np.ndarray]:
        """Encode a training sample. `labels[t]` is the target of position t (already shifted by one), because
        paddleformers' models do not shift labels themselves."""
        self._check_videos(sample.videos)
        vision = self.images(sample.images)
        videos, texts = self.videos(sample.videos)
        input_ids, labels = self._encode(sample, self.training_segments(sample, template), vision, texts)
        if all(label == IGNORE_INDEX for label in labels[1:]):
            raise SampleError("no assistant tokens to learn from")
        targets = np.asarray(labels[1:] + [IGNORE_INDEX], dtype="int64")
        return {"input_ids": np.asarray(input_ids, dtype="int64"), "labels": targets, **vision, **videos}

    def length(self, sample: Sample, template: ChatTemplate) -> int:
        """The exact token count `__call__` would give, from image and video headers instead of decoded pixels."""
        self._check_videos(sample.videos)
        grids = [self.vision.grid_for_size(*self.reader.size(r)) for r in sample.images]
        _, texts = self.videos(sample.videos, decode=False)
        segments = self.training_segments(sample, template)
        input_ids, labels = self._encode(sample, segments, {"image_grid_thw": grids}, texts)
        if all(label == IGNORE_INDEX for label in labels[1:]):
            raise SampleError("no assistant tokens to learn from")
        return len(input_ids)

    def prompt_ids(self, sample: Sample, template: ChatTemplate) -> list[int]:
        """The input ids `encode_prompt` gives, from image and video headers instead of decoded pixels."""
        grids = [self.vision.grid_for_size(*self.reader.size(r)) for r in sample.images]
        _, texts = self.videos(sample.videos, decode=False)
        segments = template.segments(self.with_vision_tokens(sample.messages), add_generation_prompt=True)
        input_ids, _ = self._encode(sample, prompt_segments(segments), {"image_grid_thw": grids}, texts)
        return input_ids

    def encode_prompt(self, sample: Sample, template: ChatTemplate) -> dict[str, np.ndarray]:
        """Encode a conversation up to the generation prompt, for inference: segment by segment as training
        encodes, so the ids are the training ids of the text before an answer."""
        vision = self.images(sample.images)
        videos, texts = self.videos(sample.videos)
        segments = template.segments(self.with_vision_tokens(sample.messages), add_generation_prompt=True)
        input_ids, _ = self._encode(sample, prompt_segments(segments), vision, texts)
        return {"input_ids": np.asarray(input_ids, dtype="int64"), **vision, **videos}
