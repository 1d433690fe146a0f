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
import threading
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
from paddlemix.processors.video_sampling import VIDEO_MIN_TOKENS, VideoOptions
from paddlemix.utils.errors import UserError

logger = logging.getLogger(__name__)

WARNINGS_PER_SOURCE = 5
MIN_SEEN_FOR_BUDGET = 32
MISFORMAT_PROBE = 20


def own_news(news: Any) -> list[Any]:
    """The gather of one process: its own news only."""
    return [news]


class SkipLog:
    """Per-source attempts and skips; appends each skip as one JSON line to `path` (if given) and enforces budgets.

    Several processes: each rank keeps what it met since the last `sync` (its news); `sync`, a collective run on
    every rank at each step end and before the summary, merges the news of all ranks in rank order into the same
    totals everywhere: trained samples summed over the data-parallel ranks, eval samples (by sample id) and skipped
    records (by source, file and index) counted once. Process 0 appends the other ranks' skips to `path`, so the
    file, the counts and the skip budget (`max_skip_ratio` on the totals) are those of one process.
    """

    def __init__(self, path: str | Path | None = None, max_skip_ratio: float = 1.0,
                 gather: Callable[[Any], list[Any]] | None = None, rank: int = 0, data_rank: int = 0):  # fmt: skip
        self.path = Path(path) if path else None
        self.max_skip_ratio = max_skip_ratio
        self.gather = gather or own_news  # all ranks' news in rank order (one process: its own)
        self.rank, self.data_rank = rank, data_rank
        # what this process knows: the totals of the last sync plus its own news since
        self.seen: Counter[str] = Counter()
        self.skipped: Counter[str] = Counter()
        self.usable: Counter[str] = Counter()  # records that passed a check (for the mis-formatted-source probe)
        self.first_reason: dict[str, str] = {}
        self._recorded: set[tuple[Any, ...]] = set()
        self._seen_ids: set[str] = set()
        self.error = ""
        # the totals over all ranks as of the last sync (identical on every rank)
        self.totals: dict[str, Any] = {"seen": Counter(), "skipped": Counter(), "usable": Counter(), "entries": {},
                                       "ids": set(), "error": ""}  # fmt: skip
        self._news = self._no_news()
        self._lock = threading.Lock()  # the loader thread adds skips while the training thread syncs

    @staticmethod
    def _no_news() -> dict[str, Any]:
        return {"trained": Counter(), "usable": Counter(), "ids": {}, "entries": {}}

    def __getstate__(self) -> dict[str, Any]:  # loader workers get a copy that neither locks nor syncs
        return {k: v for k, v in self.__dict__.items() if k not in ("_lock", "gather")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock, self.gather = threading.Lock(), own_news

    def ok(self, source: str, sample_id: str | None = None) -> None:
        """Count a usable sample as seen: every call (a trained sample), or once per `sample_id` (an eval sample,
        which every evaluation and a padded distributed eval sampler read again)."""
        with self._lock:
            if sample_id is not None:
                if sample_id in self._seen_ids:
                    return
                self._seen_ids.add(sample_id)
                self._news["ids"][sample_id] = source
            else:
                self._news["trained"][source] += 1
            self.seen[source] += 1
            self.usable[source] += 1
            self._news["usable"][source] += 1
        self.check(source)  # the budget applies once MIN_SEEN_FOR_BUDGET samples were seen, good ones included

    def note_usable(self, source: str) -> None:
        """A record of `source` passed a check without being counted as seen (measured, or counted later)."""
        with self._lock:
            self.usable[source] += 1
            self._news["usable"][source] += 1

    def add(self, source: str, record: dict[str, Any], reason: str, replaced: bool = False) -> None:
        """Count and log a skipped record once, however many epochs meet it again. `replaced`: the next usable
        sample took its place in the epoch and is counted as seen instead (so a 32-record file is 32 seen)."""
        key = (source, record.get("file"), record.get("index"))
        with self._lock:
            if key in self._recorded:
                return
            self._recorded.add(key)
            line = {"source": source, **record, "reason": reason, "pid": os.getpid()}
            self._news["entries"][key] = (line, replaced)
            self._count_skip(source, reason, replaced)
        if in_loader_worker():  # the skip travels with the next sample; the training process logs and writes it
            self.check(source)
            return
        if self.skipped[source] <= WARNINGS_PER_SOURCE:
            logger.warning("skipped %s record %s: %s", source, record.get("index"), reason)
            if self.skipped[source] == WARNINGS_PER_SOURCE:
                logger.warning("further skips of %s go to skipped_samples.jsonl only", source)
        self._write([line])
        self.check(source)

    def _count_skip(self, source: str, reason: str, replaced: bool) -> None:
        self.seen[source] += 0 if replaced else 1
        self.skipped[source] += 1
        self.first_reason.setdefault(source, reason)

    def _write(self, lines: list[dict[str, Any]]) -> None:
        if self.path is None or not lines:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write("".join(json.dumps(line) + "\n" for line in lines))

    def take_news(self) -> dict[str, Any]:
        """What this process met since the last call (picklable), for `merge` on every rank."""
        with self._lock:
            news, self._news = self._news, self._no_news()
        return {**news, "rank": self.rank, "data_rank": self.data_rank}

    def merge(self, all_news: list[dict[str, Any]]) -> None:
        """Add every rank's news (in rank order, the same list on every rank) to the totals; what this process
        knows becomes the totals. Trained samples come once per data-parallel rank (ranks that share a batch under
        tensor or pipeline parallelism trained the same ones: the most any of them counted); eval samples and
        skips count once each."""
        t = self.totals
        trained: dict[int, Counter[str]] = {}  # per data-parallel rank: the most any of its ranks counted
        new_ids, new_entries, remote_lines = set(), {}, []
        for news in all_news:
            trained[news["data_rank"]] = trained.get(news["data_rank"], Counter()) | news["trained"]
            t["usable"].update(news["usable"])
            for sample_id, source in news["ids"].items():
                if sample_id not in t["ids"]:
                    t["ids"].add(sample_id)
                    new_ids.add(sample_id)
                    t["seen"][source] += 1
            for key, (line, replaced) in news["entries"].items():
                if key in t["entries"]:
                    continue
                t["entries"][key] = new_entries[key] = (line, replaced)
                t["seen"][key[0]] += 0 if replaced else 1
                t["skipped"][key[0]] += 1
                if news["rank"] != self.rank and key not in self._recorded:  # this process wrote its own
                    remote_lines.append(line)
        for counts in trained.values():
            t["seen"].update(counts)
        with self._lock:  # this process's news met since `take_news` stay counted on top of the totals
            pending = self._news
            self.seen, self.usable, self.skipped = Counter(t["seen"]), Counter(t["usable"]), Counter(t["skipped"])
            self.seen.update(pending["trained"])
            self.usable.update(pending["usable"])
            self._recorded |= set(new_entries)
            self._seen_ids |= new_ids
            for key, (_, replaced) in pending["entries"].items():
                if key not in t["entries"]:
                    self.seen[key[0]] += 0 if replaced else 1
                    self.skipped[key[0]] += 1
            for sample_id, source in pending["ids"].items():
                self.seen[source] += sample_id not in t["ids"]
            for line, _ in new_entries.values():
                self.first_reason.setdefault(line["source"], line["reason"])
        self._write(remote_lines)
        # decided on the totals alone (once found, it stays), so every rank stops at the same step
        verdicts = (self.verdict(s, t["seen"], t["skipped"], t["usable"]) for s in sorted(t["seen"] | t["skipped"]))
        t["error"] = t["error"] or next((v for v in verdicts if v), "")
        self.error = t["error"]

    def sync(self) -> None:
        """Merge the news of all ranks (a collective under several processes: call it on every rank)."""
        self.merge(self.gather(self.take_news()))

    def check(self, source: str) -> None:
        """Note (in `error`) a source whose first records all failed, or a spent skip budget. Nothing is raised
        here: this runs inside the data loader, whose thread would swallow the exception."""
        if not self.error:
            self.error = self.verdict(source, self.seen, self.skipped, self.usable)

    def verdict(self, source: str, seen: Counter[str], skipped: Counter[str], usable: Counter[str]) -> str:
        """Why the run must stop on these counts ("" when it goes on)."""
        where = f" See {self.path} for every skipped record." if self.path else ""
        if skipped[source] >= MISFORMAT_PROBE and not usable[source]:
            return unusable_source_message(source, self.first_reason[source]) + where
        n_seen, n_skipped = sum(seen.values()), sum(skipped.values())
        if n_seen >= MIN_SEEN_FOR_BUDGET and n_skipped / n_seen > self.max_skip_ratio:
            per_source = ", ".join(f"{s}: {n}/{seen[s]}" for s, n in skipped.items())
            return (
                f"{n_skipped} of {n_seen} samples were skipped ({n_skipped / n_seen:.0%}), more than max_skip_ratio "
                f"{self.max_skip_ratio:.0%} ({per_source}). Fix the data or raise max_skip_ratio.{where}"
            )
        return ""

    def add_line(self, line: str) -> None:
        """Record a skip carried by a batch (a `skip_line`); one already recorded here is not counted twice."""
        entry = json.loads(line)
        source, reason, replaced = entry.pop("source"), entry.pop("reason"), entry.pop("replaced", False)
        self.add(source, entry, reason, replaced)

    def raise_if_exceeded(self) -> None:
        """Stop the run (from the main thread) once `check` has found the data unusable."""
        if self.error:
            raise UserError(self.error)

    def skipped_in_file(self) -> set[tuple[Any, ...]]:
        """Distinct skipped records (source, file, index) in the skip file, which holds those of the run this one
        resumed too."""
        if self.path is None or not self.path.is_file():
            return set()
        keys = set()
        for line in self.path.read_text(encoding="utf-8").splitlines():
            with contextlib.suppress(ValueError, KeyError):
                r = json.loads(line)
                keys.add((r["source"], r.get("file"), r.get("index")))
        return keys

    def summary(self) -> dict[str, dict[str, int]]:
        """Records seen and skipped per source over all ranks (loader workers included); syncs first, so under
        several processes every rank calls it."""
        self.sync()
        skipped = Counter(key[0] for key in set(self.totals["entries"]) | self.skipped_in_file())
        seen = self.totals["seen"]
        return {s: {"seen": max(seen[s], skipped[s]), "skipped": skipped[s]} for s in {**seen, **skipped}}


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
        if final and self.count_loaded:  # an eval record is seen once, however many evaluations read it
            self.skip_log.ok(name, self.sample_id(i) if self.split != "train" else None)
        else:  # measured (planning) or counted later by the trainer: still proves the source is readable
            self.skip_log.note_usable(name)
        return result

    def sample_id(self, i: int) -> str:
        """The readable id of item `i`'s record, unique over the split: `source#index` (the record's index in its
        file), `source#k:index` for the k-th file of a source with several. The eval loss and the eval `seen` count
        each record once by it, over batches and processes."""
        source, record = self.mix.pair(i)
        dataset = self.mix.datasets[source]
        file, local = dataset.locate(record)
        part = f"{dataset.files.index(file)}:" if len(dataset.files) > 1 else ""
        return f"{self.mix.names[source]}#{part}{local}"

    def encode(self, i: int, replaced: bool = False) -> dict[str, Any]:
        """Encode item `i` (with its `sample_id`), or log the skip and raise `SampleError`."""
        out = self._attempt(i, self.processor, final=True, replaced=replaced)
        return {**out, "sample_id": self.sample_id(i)}

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
    encoder.video_options = video_defaults(data)
    encoder.max_video_seconds = data.max_video_seconds
    if encoder.layout is not None:
        warn_once(video_pixels_warning(data, encoder.layout.factor))
    return encoder


SAID: set[str] = set()  # warnings already given in this process (a training run builds its encoder twice)


def warn_once(message: str | None) -> None:
    """Log `message` as a warning the first time this process sees it (None: nothing to say)."""
    if message and message not in SAID:
        SAID.add(message)
        logger.warning(message)


def video_pixels_warning(data: DataArgs, factor: int) -> str | None:
    """The warning for a per-frame video pixel cap (`video_max_pixels`, else `video_resolution`^2) below the
    per-frame minimum (`video_min_pixels`, default 128 f^2 for f = `factor` pixels per merged token), else None.
    qwen-vl-utils' rule lets the minimum win (the frame budget is max(..., 1.05 min_pixels)), so a frame smaller
    than the minimum is enlarged to it, over the cap."""
    if data.video_max_pixels is not None:
        cap, said_cap = data.video_max_pixels, f'"video_max_pixels" {data.video_max_pixels}'
    elif data.video_resolution:
        cap = data.video_resolution**2
        said_cap = f'"video_resolution" {data.video_resolution} (at most {cap} pixels per frame)'
    else:
        return None
    low = data.video_min_pixels if data.video_min_pixels is not None else VIDEO_MIN_TOKENS * factor * factor
    if low <= cap:
        return None
    said_low = (f'"video_min_pixels" {low}' if data.video_min_pixels is not None
                else f'the default "video_min_pixels" {low} (128 x {factor}^2, as "video_min_pixels" is unset)')  # fmt: skip
    return (f"{said_cap} is below {said_low}: as in qwen-vl-utils the minimum wins, so video frames smaller than "
            f"the cap are enlarged to at least {low} pixels ({low / cap:.1f}x the cap). Set \"video_min_pixels\" to "
            f"at most {cap} too (e.g. \"video_min_pixels\": {cap}) to keep every frame under the cap.")  # fmt: skip


def video_defaults(data: DataArgs) -> VideoOptions:
    """The run's video sampling defaults from PaddleMIX's keys (see `DataArgs`)."""
    pixels = data.video_resolution**2 if data.video_resolution else None
    if data.video_max_pixels is not None:
        pixels = data.video_max_pixels
    return VideoOptions(fps=data.video_fps, max_frames=data.video_maxlen, min_pixels=data.video_min_pixels,
                        max_pixels=pixels)  # fmt: skip


def build_dataset(
    sources: Sequence[DatasetSource],
    encoder: SampleProcessor,
    processor: Any,
    seed: int,
    skip_log: SkipLog | None = None,
    split: str = "train",
    source_type: type[SourceDataset] = SourceDataset,
) -> EncodedDataset:
    """Read, mix and wrap the sources of one split (`dataset.train` or `dataset.eval`); `processor` is the
    model's, whose chat template serves sources that name none. `source_type` reads the records (preference
    training: `PairSourceDataset`)."""
    datasets = [source_type(s) for s in sources]
    mix = MixDataset(datasets, [s.sampling_rate for s in sources], seed, source_names(sources))
    logger.info("%s data mix: %s", split, mix.describe())
    templates = [template_for(processor, s.chat_template, s.keep_empty_think) for s in sources]
    return EncodedDataset(mix, templates, encoder, skip_log, split)
