"""Answer concurrent requests in shared batches: requests queue up, one worker thread takes every waiting request
with the same decoding settings and seed (up to `max_batch_size`) and answers them as one left-padded, KV-cached
batch (`Generator.generate_encoded`), instead of one after another."""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import numpy as np

from paddlemix.inference.decoding import GenerationSettings

logger = logging.getLogger(__name__)


class QueueFull(RuntimeError):
    """More requests are waiting than the server accepts (`max_waiting`)."""


@dataclass
class Answer:
    """One request's answer: its text, its new token ids (the eos id included when it stopped on one) and the
    number of prompt tokens (images expanded)."""

    text: str
    tokens: list[int]
    prompt_tokens: int


@dataclass
class _Job:
    prompt: dict[str, np.ndarray]
    settings: GenerationSettings
    seed: int
    future: Future
    on_tokens: Callable[[list[int]], None] | None = None


class Batcher:
    """A queue in front of one `Generator`, drained by one worker thread (generation is never run concurrently).

    `submit` returns a Future of an `Answer`; a Future cancelled before its batch starts is dropped. `batches`
    counts the batches run and `largest_batch` the most requests answered together, for tests and logs.
    """

    def __init__(self, generator: Any, max_batch_size: int = 8, max_waiting: int = 64, gather_seconds: float = 0.02):
        self.generator = generator
        self.max_batch_size = max(1, max_batch_size)
        self.gather_seconds = gather_seconds
        self._queue: queue.Queue[_Job | None] = queue.Queue(maxsize=max_waiting)
        self._held: list[_Job] = []  # taken from the queue but not compatible with the batch being built
        self.batches = 0
        self.largest_batch = 0
        self._thread = threading.Thread(target=self._run, name="paddlemix-batcher", daemon=True)
        self._thread.start()

    def submit(self, prompt: dict[str, np.ndarray], settings: GenerationSettings, seed: int = 0,
               on_tokens: Callable[[list[int]], None] | None = None) -> Future:  # fmt: skip
        """Queue one encoded prompt; `on_tokens(tokens so far)` runs in the worker after every decoding step (for
        streaming; it must be quick and must not raise). Raises QueueFull past `max_waiting`."""
        job = _Job(prompt, settings, seed, Future(), on_tokens)
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            raise QueueFull(f"{self._queue.maxsize} requests are already waiting") from None
        return job.future

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=30)

    def _next(self, timeout: float) -> _Job | None:
        if self._held:
            return self._held.pop(0)
        return self._queue.get(timeout=timeout) if timeout > 0 else self._queue.get_nowait()

    def _gather(self, first: _Job) -> list[_Job]:
        """`first` and the jobs waiting now (or within `gather_seconds`) that share its settings and seed."""
        batch, other = [first], []
        while len(batch) < self.max_batch_size:
            try:
                job = self._next(self.gather_seconds)
            except queue.Empty:
                break
            if job is None:
                self._queue.put(None)
                break
            same = job.settings == first.settings and job.seed == first.seed
            (batch if same else other).append(job)
        self._held = other + self._held
        return [job for job in batch if job.future.set_running_or_notify_cancel()]

    def _run(self) -> None:
        while True:
            first = self._held.pop(0) if self._held else self._queue.get()
            if first is None:
                return
            batch = self._gather(first)
            if not batch:
                continue
            self.batches += 1
            self.largest_batch = max(self.largest_batch, len(batch))
            try:
                answers = self.generator.generate_encoded([j.prompt for j in batch], first.settings, seed=first.seed,
                                                          on_step=_streams(batch))  # fmt: skip
            except Exception as err:  # noqa: BLE001 - the failure goes to the waiting requests, the worker lives on
                logger.exception("generation failed for a batch of %d requests", len(batch))
                for job in batch:
                    job.future.set_exception(err)
                continue
            for row, job in enumerate(batch):
                answer = Answer(answers.texts[row], answers.generated.tokens[row], len(job.prompt["input_ids"]))
                job.future.set_result(answer)


def _streams(batch: list[_Job]) -> Callable[[list[list[int]]], None] | None:
    """The `on_step` of a batch: each streaming job's row of tokens to its `on_tokens`; None when none streams."""
    streaming = [(row, job.on_tokens) for row, job in enumerate(batch) if job.on_tokens is not None]
    if not streaming:
        return None

    def on_step(tokens: list[list[int]]) -> None:
        for row, send in streaming:
            try:
                send(list(tokens[row]))
            except Exception:  # noqa: BLE001 - a gone client must not stop the batch
                logger.debug("streaming callback failed", exc_info=True)

    return on_step
