"""The dataset the trainer sees: a mix of sources, encoded on access, with bad samples skipped and accounted for.

Any exception while reading, decoding or encoding one record is a skip: written to `skipped_samples.jsonl`
(source, file, record index, reason) and counted per source. A run stops with a clear message when the skipped
share passes `max_skip_ratio`, at once when a source's first records all fail (a mis-formatted file), or when no
record is usable; inside the data loader that stop ends the process (see `loader_guard`) instead of stalling it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from paddlemix.arguments import DataArgs, DatasetSource
from paddlemix.datasets.conversation import SampleError, as_skip
from paddlemix.datasets.loader_guard import stop_run_on_failure
from paddlemix.datasets.mixing import MixDataset
from paddlemix.datasets.sources import SourceDataset
from paddlemix.processors.chat_template import ChatTemplate, template_for
from paddlemix.processors.images import ImageReader
from paddlemix.processors.sample_processor import SampleProcessor
from paddlemix.utils.errors import UserError

logger = logging.getLogger(__name__)

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
        self.usable: Counter[str] = Counter()  # records that passed a check (for the mis-formatted-source probe)
        self.first_reason: dict[str, str] = {}
        self._recorded: set[tuple[Any, ...]] = set()
        self.error = ""

    def ok(self, source: str) -> None:
        self.seen[source] += 1
        self.usable[source] += 1
        self.check(source)  # the budget applies once MIN_SEEN_FOR_BUDGET samples were seen, good ones included

    def add(self, source: str, record: dict[str, Any], reason: str, replaced: bool = False) -> None:
        """Count and log a skipped record once, however many epochs meet it again. `replaced`: the next usable
        sample took its place in the epoch and is counted as seen instead (so a 32-record file is 32 seen)."""
        key = (source, record.get("file"), record.get("index"))
        if key in self._recorded:
            return
        self._recorded.add(key)
        self.seen[source] += 0 if replaced else 1
        self.skipped[source] += 1
        self.first_reason.setdefault(source, reason)
        if in_loader_worker():  # the skip travels with the next sample; the training process logs and writes it
            self.check(source)
            return
        if self.skipped[source] <= WARNINGS_PER_SOURCE:
            logger.warning("skipped %s record %s: %s", source, record.get("index"), reason)
            if self.skipped[source] == WARNINGS_PER_SOURCE:
                logger.warning("further skips of %s go to skipped_samples.jsonl only", source)
        if self.path is not None:
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
        if self.skipped[source] == MISFORMAT_PROBE and not self.usable[source]:
            self.error = unusable_source_message(source, self.first_reason[source]) + where
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
        source, reason, replaced = entry.pop("source"), entry.pop("reason"), entry.pop("replaced", False)
        self.add(source, entry, reason, replaced)

    def raise_if_exceeded(self) -> None:
        """Stop the run (from the main thread) once `check` has found the data unusable."""
        if self.error:
            raise UserError(self.error)

    def skipped_in_file(self) -> Counter[str]:
        """Distinct skipped records per source in the skip file, which data-loader workers append to as well."""
        if self.path is None or not self.path.is_file():
            return Counter()
        keys = set()
        for line in self.path.read_text(encoding="utf-8").splitlines():
            with contextlib.suppress(ValueError, KeyError):
                r = json.loads(line)
                keys.add((r["source"], r.get("file"), r.get("index")))
        return Counter(source for source, _, _ in keys)

    def summary(self) -> dict[str, dict[str, int]]:
        """Records seen and skipped per source, in this process and (skips) in its loader workers."""
        skipped = self.skipped | self.skipped_in_file()
        return {s: {"seen": max(self.seen[s], skipped[s]), "skipped": skipped[s]} for s in {**self.seen, **skipped}}


def unusable_source_message(source: str, first_reason: str) -> str:
    """Why a source whose first MISFORMAT_PROBE records all failed stops the run: missing images (almost always
    image paths relative to another folder than the one they resolve against) or a mis-formatted file."""
    if first_reason.startswith("image not found"):
        return (
            f'data source "{source}": the images of its first {MISFORMAT_PROBE} records are all missing, e.g. '
            f'{first_reason}. Relative image paths resolve against the source\'s "image_root", else the data '
            "file's folder (README, Data)."
        )
    return (
        f'data source "{source}" looks mis-formatted: its first {MISFORMAT_PROBE} records all failed, e.g. '
        f"{first_reason}. Check the file against the formats in the README."
    )


def in_loader_worker() -> bool:
    """True inside a data-loader worker process, whose counters never reach the trainer: there skips travel with
    the next sample (`skips`) and the training process records them."""
    import paddle

    return paddle.io.get_worker_info() is not None


def skip_line(source: str, record: dict[str, Any], reason: str, replaced: bool = False) -> str:
    """One skip as the JSON line a batch carries to the trainer (read back by `SkipLog.add_line`)."""
    return json.dumps({"source": source, **record, "reason": reason, **({"replaced": True} if replaced else {})})


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
        split: str = "train",
    ):
        self.mix = mix
        self.templates = list(templates)
        self.processor = processor
        self.skip_log = skip_log or SkipLog()
        self.split = split
        self.count_loaded = True
        self._lengths: dict[tuple[int, int], int] = {}  # keyed by (source, record): the same in every epoch
        self._counted: set[int] = set()  # eval items counted as seen: every evaluation reads them again
        self._bad: set[tuple[int, int]] = set()
        self._pending_skips: list[str] = []

    def take_skips(self) -> list[str]:
        """The skips met since the last call, as JSON lines (see `skip_line`)."""
        out, self._pending_skips = self._pending_skips, []
        return out

    def __len__(self) -> int:
        return len(self.mix)

    def where(self, i: int) -> tuple[str, dict[str, Any]]:
        """Source name and {file, index} of item `i`, for skip reports."""
        source, record = self.mix.pair(i)
        file, local = self.mix.datasets[source].locate(record)
        return self.mix.names[source], {"file": str(file.path), "index": local}

    def _attempt(self, i: int, work: Callable[[Any, ChatTemplate], Any], final: bool, replaced: bool = False) -> Any:
        """Run `work` on item `i`; skips are always logged, successes only when `final` (the sample's last
        check), so a sample that is measured and then encoded counts once. `replaced`: a skip here is replaced
        by the next usable item (see `SkipLog.add`)."""
        name, record = self.where(i)
        try:
            source, _ = self.mix.pair(i)
            result = work(self.mix[i], self.templates[source])
        except Exception as err:
            skip = as_skip(err)
            self._bad.add(self.mix.pair(i))
            self.skip_log.add(name, record, str(skip), replaced)
            # In a loader worker the skip log is a copy: the skip travels with the next sample to the trainer,
            # which records it and enforces the skip budget against the samples really trained.
            self._pending_skips.append(skip_line(name, record, str(skip), replaced))
            raise skip from None
        if final and self.count_loaded and i not in self._counted:
            self.skip_log.ok(name)
            if self.split != "train":  # an eval record is seen once, however many evaluations read it
                self._counted.add(i)
        else:  # measured (planning) or counted later by the trainer: still proves the source is readable
            self.skip_log.usable[name] += 1
        return result

    def encode(self, i: int, replaced: bool = False) -> dict[str, Any]:
        """Encode item `i` (with a readable `sample_id`), or log the skip and raise `SampleError`."""
        out = self._attempt(i, self.processor, final=True, replaced=replaced)
        name, record = self.where(i)
        return {**out, "sample_id": f"{name}#{record['index']}"}

    def length(self, i: int) -> int:
        """Token count of item `i` after image expansion, without decoding images; cached per item."""
        key = self.mix.pair(i)
        if key not in self._lengths:
            self._lengths[key] = self._attempt(i, self.processor.length, final=False)
        return self._lengths[key]

    def no_usable_sample(self) -> UserError:
        """The error for a split whose records were all skipped, with the first reason of each of its sources."""
        first = self.skip_log.first_reason
        reasons = "; ".join(f"{name}: {first[name]}" for name in self.mix.names if name in first)
        return UserError(
            f"no usable sample in the {self.split} data: all {len(self)} were skipped (first reasons: {reasons}). "
            f"See {self.skip_log.path or 'skipped_samples.jsonl'} for every record and fix the data or its paths."
        )

    def first_usable(self) -> int:
        """The first item that passes every check short of decoding pixels; UserError when there is none."""
        for i in range(len(self)):
            try:
                self.length(i)
                return i
            except SampleError:
                continue
        raise self.no_usable_sample()

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        """Item `i`, or the next usable one after it (in the same epoch) when it is skipped. Runs in the data
        loader: a spent skip budget or data without any usable sample stops the run there (see `loader_guard`)."""
        with stop_run_on_failure():
            n = len(self)
            epoch_start = i - i % n
            for attempt in range(n):
                k = epoch_start + (i % n + attempt) % n
                if self.mix.pair(k) in self._bad:
                    continue
                try:
                    return {**self.encode(k, replaced=True), "skips": self.take_skips()}
                except SampleError:
                    continue
            raise self.no_usable_sample()


def source_names(sources: Sequence[DatasetSource]) -> list[str]:
    """Readable, unique names: reader and first file name, numbered when two sources would share one."""
    names = [f"{s.name}:{Path(s.data_files[0]).name}" for s in sources]
    return [f"{n}#{i}" if names.count(n) > 1 else n for i, n in enumerate(names)]


def build_encoder(adapter: Any, processor: Any, data: DataArgs) -> SampleProcessor:
    """The model family's sample encoder, reading images with the run's pixel limit and URL cache, and record text
    as `split_special_tokens` says."""
    encoder = adapter.sample_processor(processor, data.max_length)
    encoder.reader = ImageReader(data.max_image_pixels, data.image_cache_dir, image_resolution=data.image_resolution)
    encoder.split_special_tokens = data.split_special_tokens
    return encoder


def build_dataset(
    sources: Sequence[DatasetSource],
    encoder: SampleProcessor,
    processor: Any,
    seed: int,
    skip_log: SkipLog | None = None,
    split: str = "train",
) -> EncodedDataset:
    """Read, mix and wrap the sources of one split (`dataset.train` or `dataset.eval`); `processor` is the
    model's, whose chat template serves sources that name none."""
    datasets = [SourceDataset(s) for s in sources]
    mix = MixDataset(datasets, [s.sampling_rate for s in sources], seed, source_names(sources))
    logger.info("%s data mix: %s", split, mix.describe())
    templates = [template_for(processor, s.chat_template, s.keep_empty_think) for s in sources]
    return EncodedDataset(mix, templates, encoder, skip_log, split)
