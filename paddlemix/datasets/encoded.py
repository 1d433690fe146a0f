"""The dataset the trainer sees: a mix of sources, encoded on access, with bad samples skipped and accounted for.

Each skip is written to `skipped_samples.jsonl` (source, file, record index, reason) and counted per source. A run
stops with a clear message when the skipped share passes `max_skip_ratio`, or at once when a source's first
records all fail (a mis-formatted file), instead of drowning the log in warnings.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from paddlemix.arguments import DatasetSource
from paddlemix.datasets.conversation import SampleError
from paddlemix.datasets.mixing import MixDataset
from paddlemix.datasets.sources import SourceDataset
from paddlemix.processors.chat_template import ChatTemplate, template_for
from paddlemix.processors.sample_processor import SampleProcessor
from paddlemix.utils.errors import UserError

logger = logging.getLogger(__name__)

MAX_CONSECUTIVE_SKIPS = 64
WARNINGS_PER_SOURCE = 5
MIN_SEEN_FOR_BUDGET = 32
MISFORMAT_PROBE = 20


class SkipLog:
    """Per-source attempts and skips; appends each skip as one JSON line to `path` (if given) and enforces budgets."""

    def __init__(self, path: str | Path | None = None, max_skip_ratio: float = 1.0):
        self.path = Path(path) if path else None
        self.max_skip_ratio = max_skip_ratio
        self.seen: Counter[str] = Counter()
        self.skipped: Counter[str] = Counter()
        self.first_reason: dict[str, str] = {}
        self._recorded: set[tuple[Any, ...]] = set()
        self.error = ""

    def ok(self, source: str) -> None:
        self.seen[source] += 1
        self.check(source)  # the budget applies once MIN_SEEN_FOR_BUDGET samples were seen, good ones included

    def add(self, source: str, record: dict[str, Any], reason: str) -> None:
        """Count and log a skipped record once, however many epochs meet it again."""
        key = (source, record.get("file"), record.get("index"))
        if key in self._recorded:
            return
        self._recorded.add(key)
        self.seen[source] += 1
        self.skipped[source] += 1
        self.first_reason.setdefault(source, reason)
        if self.skipped[source] <= WARNINGS_PER_SOURCE:
            logger.warning("skipped %s record %s: %s", source, record.get("index"), reason)
            if self.skipped[source] == WARNINGS_PER_SOURCE:
                logger.warning("further skips of %s go to skipped_samples.jsonl only", source)
        if self.path is not None and not in_loader_worker():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            line = json.dumps({"source": source, **record, "reason": reason, "pid": os.getpid()})
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(line + "\n")
        self.check(source)

    def check(self, source: str) -> None:
        """Note (in `error`) a source whose first records all failed, or a spent skip budget. Nothing is raised
        here: this runs inside the data loader, whose thread would swallow the exception."""
        if self.error:
            return
        where = f" See {self.path} for every skipped record." if self.path else ""
        if self.seen[source] == MISFORMAT_PROBE and self.skipped[source] == MISFORMAT_PROBE:
            self.error = (
                f'data source "{source}" looks mis-formatted: its first {MISFORMAT_PROBE} records all failed, '
                f"e.g. {self.first_reason[source]}. Check the file against the formats in the README.{where}"
            )
        seen, skipped = sum(self.seen.values()), sum(self.skipped.values())
        if not self.error and seen >= MIN_SEEN_FOR_BUDGET and skipped / seen > self.max_skip_ratio:
            per_source = ", ".join(f"{s}: {n}/{self.seen[s]}" for s, n in self.skipped.items())
            self.error = (
                f"{skipped} of {seen} samples were skipped ({skipped / seen:.0%}), more than max_skip_ratio "
                f"{self.max_skip_ratio:.0%} ({per_source}). Fix the data or raise max_skip_ratio.{where}"
            )

    def add_line(self, line: str) -> None:
        """Record a skip carried by a batch (a `skip_line`); one already recorded here is not counted twice."""
        entry = json.loads(line)
        source, reason = entry.pop("source"), entry.pop("reason")
        self.add(source, entry, reason)

    def raise_if_exceeded(self) -> None:
        """Stop the run (from the main thread) once `check` has found the data unusable."""
        if self.error:
            raise UserError(self.error)

    def summary(self) -> dict[str, dict[str, int]]:
        return {s: {"seen": self.seen[s], "skipped": self.skipped[s]} for s in self.seen}


def in_loader_worker() -> bool:
    """True inside a data-loader worker process, whose counters never reach the trainer: there skips travel with
    the next sample (`skips`) and the training process records them."""
    import paddle

    return paddle.io.get_worker_info() is not None


def skip_line(source: str, record: dict[str, Any], reason: str) -> str:
    """One skip as the JSON line a batch carries to the trainer (read back by `SkipLog.add_line`)."""
    return json.dumps({"source": source, **record, "reason": reason})


class EncodedDataset:
    """Map-style dataset of encoded samples; a bad sample is logged and replaced by the next good one.

    `count_loaded=False` leaves the per-source `seen` count to the trainer, which counts samples when it trains
    them (prefetched samples that never reach a step are not counted); the skips met while producing a sample
    travel with it as `skips`.
    """

    def __init__(
        self,
        mix: MixDataset,
        templates: Sequence[ChatTemplate],
        processor: SampleProcessor,
        skip_log: SkipLog | None = None,
    ):
        self.mix = mix
        self.templates = list(templates)
        self.processor = processor
        self.skip_log = skip_log or SkipLog()
        self.count_loaded = True
        self._lengths: dict[int, int] = {}
        self._pending_skips: list[str] = []

    def take_skips(self) -> list[str]:
        """The skips met since the last call, as JSON lines (see `skip_line`)."""
        out, self._pending_skips = self._pending_skips, []
        return out

    def __len__(self) -> int:
        return len(self.mix)

    def where(self, i: int) -> tuple[str, dict[str, Any]]:
        """Source name and {file, index} of item `i`, for skip reports."""
        source, record = self.mix.index[i]
        file, local = self.mix.datasets[source].locate(record)
        return self.mix.names[source], {"file": str(file.path), "index": local}

    def _attempt(self, i: int, work: Callable[[Any, ChatTemplate], Any], final: bool) -> Any:
        """Run `work` on item `i`; skips are always logged, successes only when `final` (the sample's last
        check), so a sample that is measured and then encoded counts once."""
        name, record = self.where(i)
        try:
            source, _ = self.mix.index[i]
            result = work(self.mix[i], self.templates[source])
        except SampleError as err:
            self.skip_log.add(name, record, str(err))
            self._pending_skips.append(skip_line(name, record, str(err)))
            raise
        if final and self.count_loaded:
            self.skip_log.ok(name)
        return result

    def encode(self, i: int) -> dict[str, Any]:
        """Encode item `i` (with a readable `sample_id`), or log the skip and raise `SampleError`."""
        out = self._attempt(i, self.processor, final=True)
        name, record = self.where(i)
        return {**out, "sample_id": f"{name}#{record['index']}"}

    def length(self, i: int) -> int:
        """Token count of item `i` after image expansion, without decoding images; cached per item."""
        if i not in self._lengths:
            self._lengths[i] = self._attempt(i, self.processor.length, final=False)
        return self._lengths[i]

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        for attempt in range(MAX_CONSECUTIVE_SKIPS):
            try:
                return {**self.encode((i + attempt) % len(self)), "skips": self.take_skips()}
            except SampleError:
                continue
        raise UserError(
            f"{MAX_CONSECUTIVE_SKIPS} consecutive samples were skipped near item {i}; the data is probably "
            f"mis-formatted. See {self.skip_log.path or 'skipped_samples.jsonl'} for the reasons."
        )


def source_names(sources: Sequence[DatasetSource]) -> list[str]:
    """Readable, unique names: reader and first file name, numbered when two sources would share one."""
    names = [f"{s.name}:{Path(s.data_files[0]).name}" for s in sources]
    return [f"{n}#{i}" if names.count(n) > 1 else n for i, n in enumerate(names)]


def build_dataset(
    sources: Sequence[DatasetSource],
    encoder: SampleProcessor,
    processor: Any,
    seed: int,
    skip_log: SkipLog | None = None,
) -> EncodedDataset:
    """Read, mix and wrap the sources of one split (`dataset.train` or `dataset.eval`); `processor` is the
    model's, whose chat template serves sources that name none."""
    datasets = [SourceDataset(s) for s in sources]
    mix = MixDataset(datasets, [s.sampling_rate for s in sources], seed, source_names(sources))
    logger.info("data mix: %s", mix.describe())
    templates = [template_for(processor, s.chat_template) for s in sources]
    return EncodedDataset(mix, templates, encoder, skip_log)
