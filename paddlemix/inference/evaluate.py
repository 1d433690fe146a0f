"""Evaluation by generation of a file of questions with references: answers from a loaded model or from a running
OpenAI-compatible server, written to `predictions.jsonl` as they come, then scored (metrics.py).

Records are read as training reads them (`chatml_dataset`, `coco_vqa`, `coco_caption`): the last assistant turn is
the reference, unless the record lists several under `references`, `answers`, `answer` (VQA, VQAv2 dicts too) or
`caption` (a list). A run skips records already in `predictions.jsonl` (resumable); the scores cover every record
in that file, so they do not depend on the batch size or on how many runs wrote it.
"""

from __future__ import annotations

import base64
import json
import logging
import mimetypes
import re
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from paddlemix.arguments import DatasetSource
from paddlemix.datasets.conversation import (
    IMAGE_PLACEHOLDER,
    VIDEO_PLACEHOLDER,
    ImageBytes,
    ImageRef,
    Sample,
    VideoRef,
    plain_text,
)
from paddlemix.datasets.sources import SourceDataset
from paddlemix.inference.metrics import score_records
from paddlemix.utils.errors import UserError

logger = logging.getLogger(__name__)

PREDICTIONS = "predictions.jsonl"
METRICS_FILE = "metrics.json"


@dataclass
class Question:
    """One record to answer: its index in the file, the conversation before the answer and the references."""

    index: int
    sample: Sample
    references: list[str]


REFERENCE_KEYS = ("references", "answers", "answer", "caption")


def references_of(record: Any, reference: str) -> list[str]:
    """All references a raw record lists under `references`, `answers`, `answer` (VQA) or `caption`: strings,
    numbers, or VQAv2's `{"answer": ...}` dicts, duplicates dropped in order; else `reference` alone."""
    if isinstance(record, dict):
        for key in REFERENCE_KEYS:
            value = record.get(key)
            if isinstance(value, list):
                texts = [_reference_text(v) for v in value]
                texts = [t for t in dict.fromkeys(texts) if t is not None]
                if texts:
                    return texts
    return [reference]


def _reference_text(value: Any) -> str | None:
    if isinstance(value, dict):
        value = value.get("answer")
    if isinstance(value, bool) or value is None:
        return None
    return str(value) if isinstance(value, (str, int, float)) else None


def questions(data: SourceDataset, done: set[int], skipped: list[dict[str, Any]]) -> Iterator[Question]:
    """The records not in `done`, cut before their last assistant turn; unreadable ones go to `skipped`."""
    for i in range(len(data)):
        if i in done:
            continue
        try:
            sample = data[i]
            last = max(k for k, m in enumerate(sample.messages) if m.role == "assistant")
            file, local = data.locate(i)
            refs = references_of(file[local], plain_text(sample.messages[last].content))
            yield Question(i, Sample(sample.messages[:last], sample.images, sample.source, i, sample.videos), refs)
        except Exception as err:  # noqa: BLE001 - any failure of one record is a skip, never the end of a run
            skipped.append({"index": i, "reason": str(err)})


def check_same_data(output_dir: Path, data_file: str) -> None:
    """Refuse to resume predictions that `output_dir/metrics.json` says were made for another data file."""
    try:
        earlier = json.loads((output_dir / METRICS_FILE).read_text(encoding="utf-8")).get("data_file")
    except (OSError, ValueError, AttributeError):
        return
    if earlier and Path(earlier).resolve() != Path(data_file).resolve():
        raise UserError(f"--output_dir {output_dir} holds predictions for {earlier}, not for --data_file "
                        f"{data_file}; a rerun would mix them. Give another --output_dir, or delete that one.")  # fmt: skip


def drop_torn_tail(path: Path) -> None:
    """Cut a last line without its newline (the torn write of a killed run), so appended lines stay whole."""
    if not path.is_file():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        path.write_bytes(data[: data.rfind(b"\n") + 1])


def read_predictions(path: Path) -> dict[int, dict[str, Any]]:
    """index -> prediction line of an existing predictions.jsonl (a torn last line, from a killed run, is ignored)."""
    found = {}
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
                found[int(row["index"])] = row
            except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                continue
    return found


# ---- answering: a loaded model or a server ----

Answerer = Callable[[list[Question]], list[str | Exception]]


def model_answerer(generator: Any, max_new_tokens: int) -> Answerer:
    """Greedy answers of a `Generator` for a batch (one left-padded batch; one by one if the batch fails)."""
    settings = generator.settings.with_overrides(max_new_tokens=max_new_tokens, do_sample=False)

    def answer(batch: list[Question]) -> list[str | Exception]:
        encoded: list[Any] = []
        for q in batch:
            try:
                encoded.append(generator.encode(q.sample.messages, q.sample.images, q.sample.videos))
            except Exception as err:  # noqa: BLE001
                encoded.append(err)
        ready = [e for e in encoded if not isinstance(e, Exception)]
        try:
            texts = iter(generator.generate_encoded(ready, settings).texts if ready else [])
            return [e if isinstance(e, Exception) else next(texts) for e in encoded]
        except Exception as err:  # noqa: BLE001 - a failing batch is retried record by record
            if len(batch) == 1:
                return [err]
        return [answer([q])[0] for q in batch]

    return answer


def image_url(image: ImageRef, kind: str = "image/png") -> str:
    """An image (a video file, `kind` its default MIME type) as an OpenAI URL: inline bytes and local files as
    base64 data URLs, URLs unchanged."""
    if isinstance(image, str) and image.startswith(("http://", "https://", "data:")):
        return image
    data = image.data if isinstance(image, ImageBytes) else Path(image).read_bytes()
    kind = kind if isinstance(image, ImageBytes) else mimetypes.guess_type(str(image))[0] or kind
    return f"data:{kind};base64,{base64.b64encode(data).decode()}"


def video_url(video: VideoRef) -> str:
    """A video file as a `video_url` URL (see `image_url`). Raises ValueError for what a server cannot be asked
    as the record asks it: a frame list, or a video with its own sampling keys (the server samples with its own
    settings)."""
    if isinstance(video.source, tuple):
        raise ValueError(
            "a video given as a frame list cannot be sent to the server; evaluate it with the local model"
        )
    if video.options is not None:
        raise ValueError("the record sets its own video sampling (fps, frames, pixels), which the server does not "
                         "take (it samples with its own settings); evaluate it with the local model")  # fmt: skip
    return image_url(video.source, "video/mp4")


def openai_messages(sample: Sample) -> list[dict[str, Any]]:
    """A sample's messages in OpenAI form: `<image>` (`<video>`) placeholders become image_url (video_url) parts at
    their places. Raises ValueError for a video a server cannot be sent (see `video_url`)."""
    images, videos = iter(sample.images), iter(sample.videos)
    marks = f"({re.escape(IMAGE_PLACEHOLDER)}|{re.escape(VIDEO_PLACEHOLDER)})"
    out = []
    for message in sample.messages:
        parts: list[dict[str, Any]] = []
        for piece in re.split(marks, message.content):
            if piece == IMAGE_PLACEHOLDER:
                parts.append({"type": "image_url", "image_url": {"url": image_url(next(images))}})
            elif piece == VIDEO_PLACEHOLDER:
                parts.append({"type": "video_url", "video_url": {"url": video_url(next(videos))}})
            elif piece:
                parts.append({"type": "text", "text": plain_text(piece)})
        out.append({"role": message.role, "content": parts})
    return out


def server_answerer(url: str, model: str | None, api_key: str | None, max_new_tokens: int,
                    timeout: float = 600.0) -> Answerer:  # fmt: skip
    """Greedy answers from an OpenAI-compatible server at `url` (…/v1), the batch's requests sent together."""
    endpoint = url.rstrip("/") + "/chat/completions"
    headers = {"Content-Type": "application/json"} | ({"Authorization": f"Bearer {api_key}"} if api_key else {})

    def one(q: Question) -> str | Exception:
        try:
            messages = openai_messages(q.sample)
        except ValueError as err:  # skipped with its reason, as any record that cannot be asked
            return err
        body = {"messages": messages, "max_tokens": max_new_tokens, "temperature": 0}
        body |= {"model": model} if model else {}
        request = urllib.request.Request(endpoint, json.dumps(body).encode(), headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return json.loads(response.read())["choices"][0]["message"]["content"]
        except urllib.error.HTTPError as err:
            detail = err.read().decode("utf-8", "replace")[:500]
            if err.code in (401, 404):
                raise UserError(f"--server_url {url}: the server answered {err.code}: {detail}. Check --api_key "
                                "and --served_model_name.") from None  # fmt: skip
            return RuntimeError(f"server answered {err.code}: {detail}")
        except urllib.error.URLError as err:
            raise UserError(f"--server_url {url}: cannot reach the server ({err.reason}). Start paddlemix-serve "
                            "or fix the URL.") from None  # fmt: skip

    def answer(batch: list[Question]) -> list[str | Exception]:
        with ThreadPoolExecutor(max_workers=len(batch)) as pool:
            return list(pool.map(one, batch))

    return answer


# ---- the run ----


def _batches(items: Iterator[Question], size: int) -> Iterator[list[Question]]:
    batch: list[Question] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def evaluate_file(data_file: str, source_name: str, answer: Answerer, output_dir: Path, batch_size: int = 8,
                  image_root: str | None = None, limit: int | None = None) -> dict[str, Any]:  # fmt: skip
    """Answer the records of `data_file` not yet in `output_dir/predictions.jsonl`, append them there, and write
    and return the metrics of every record in it (plus `skipped`: records that could not be answered)."""
    from tqdm import tqdm

    data = SourceDataset(DatasetSource(name=source_name, data_files=[data_file], image_root=image_root))
    output_dir.mkdir(parents=True, exist_ok=True)
    path = output_dir / PREDICTIONS
    check_same_data(output_dir, data_file)
    done = read_predictions(path)
    count = len(data) if limit is None else min(limit, len(data))
    wanted = set(range(count))
    unreadable: list[dict[str, Any]] = []  # records the reader could not turn into a question
    failed: list[dict[str, Any]] = []  # questions the model or server did not answer
    todo = questions(data, set(done) | (set(range(len(data))) - wanted), unreadable)
    drop_torn_tail(path)
    with open(path, "a", encoding="utf-8") as out, tqdm(total=len(wanted - set(done)), desc="answering",
                                                        unit="record") as bar:  # fmt: skip
        for batch in _batches(todo, max(batch_size, 1)):
            for q, text in zip(batch, answer(batch)):
                if isinstance(text, Exception):
                    failed.append({"index": q.index, "reason": f"generation failed: {text}"})
                    continue
                row = {"index": q.index, "prediction": text, "references": q.references}
                done[q.index] = row
                out.write(json.dumps(row, ensure_ascii=False) + "\n")
            out.flush()
            bar.update(len(batch))
        bar.update(len(unreadable))  # the records skipped while reading count as done too
    skipped = unreadable + failed
    rows = [done[i] for i in sorted(done) if i in wanted]
    table = score_records([r["prediction"] for r in rows], [r["references"] for r in rows])
    report = {
        "data_file": str(Path(data_file).resolve()),
        "metrics": table,
        "skipped": sorted(skipped, key=lambda s: s["index"]),
    }
    (output_dir / METRICS_FILE).write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return report
