"""The dataset the trainer sees: a mix of sources, encoded on access, with bad samples skipped and logged."""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from paddlemix.arguments import DatasetSource
from paddlemix.datasets.conversation import SampleError
from paddlemix.datasets.mixing import MixDataset
from paddlemix.datasets.sources import SourceDataset
from paddlemix.processors.chat_template import ChatTemplate, load_chat_template
from paddlemix.processors.sample_processor import SampleProcessor

logger = logging.getLogger(__name__)

MAX_CONSECUTIVE_SKIPS = 64


class SkipLog:
    """Counts skipped samples per source and appends each skip as one JSON line to `path` (if given)."""

    def __init__(self, path: str | Path | None = None):
        self.path = Path(path) if path else None
        self.counts: Counter[str] = Counter()

    def add(self, source: str, index: int, reason: str) -> None:
        self.counts[source] += 1
        logger.warning("skipped sample %s #%d: %s", source, index, reason)
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            line = json.dumps({"source": source, "index": index, "reason": reason, "pid": os.getpid()})
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(line + "\n")


class EncodedDataset:
    """Map-style dataset of encoded samples; a bad sample is logged and replaced by the next good one."""

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

    def __len__(self) -> int:
        return len(self.mix)

    def encode(self, i: int) -> dict[str, np.ndarray]:
        """Encode item `i` or raise `SampleError`."""
        source, _ = self.mix.index[i]
        sample = self.mix[i]
        return self.processor(sample, self.templates[source])

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        for attempt in range(MAX_CONSECUTIVE_SKIPS):
            j = (i + attempt) % len(self)
            try:
                return self.encode(j)
            except SampleError as err:
                source, record = self.mix.index[j]
                self.skip_log.add(self.mix.names[source], record, str(err))
        raise RuntimeError(
            f"{MAX_CONSECUTIVE_SKIPS} consecutive samples were skipped near item {i}; the data is probably "
            "mis-formatted. See skipped_samples.jsonl in the output folder for the reasons."
        )


def build_dataset(
    sources: Sequence[DatasetSource],
    processor: SampleProcessor,
    default_template: str | None,
    special_tokens: dict[str, Any],
    seed: int,
    skip_log: SkipLog | None = None,
) -> EncodedDataset:
    """Read, mix and wrap the sources of one split (`dataset.train` or `dataset.eval`)."""
    datasets = [SourceDataset(s) for s in sources]
    names = [f"{s.name}:{Path(s.data_files[0]).name}" for s in sources]
    mix = MixDataset(datasets, [s.sampling_rate for s in sources], seed, names)
    logger.info("data mix: %s", mix.describe())
    templates = [load_chat_template(s.chat_template, default_template, special_tokens) for s in sources]
    return EncodedDataset(mix, templates, processor, skip_log)
