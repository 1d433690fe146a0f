"""Skip counts of several ranks merged into the figures and the skipped_samples.jsonl of one process
(`SkipLog.take_news` / `merge`, what `SkipLog.sync` gathers over the ranks); the ranks are simulated in one process."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from paddlemix.datasets.encoded import SkipLog
from paddlemix.utils.errors import UserError

SOURCE = "chatml_dataset:train.jsonl"
EVAL = "chatml_dataset:eval.jsonl"


def exchange(logs: list[SkipLog]) -> None:
    """One `sync` of every rank: the same list of news (in rank order) merged on each."""
    news = [log.take_news() for log in logs]
    for log in logs:
        log.merge(news)


def skip(log: SkipLog, index: int, source: str = SOURCE, replaced: bool = True) -> None:
    log.add(source, {"file": f"/data/{source.split(':')[1]}", "index": index}, "image not found", replaced)


def train(log: SkipLog, slots: list[int], bad: set[int]) -> None:
    """Train the epoch slots `slots` of a file whose records `bad` are missing: a bad record is skipped (once) and
    its slot goes to the next usable record, which is counted as trained, as `EncodedDataset` and the trainer do."""
    for slot in slots:
        record = slot
        while record in bad:
            skip(log, record)
            record += 1
        log.ok(SOURCE)


def evaluate(log: SkipLog, records: list[int]) -> None:
    for record in records:
        log.ok(EVAL, f"{EVAL}#{record}")


BAD = {3, 4, 10, 17}  # 4 of 20 records missing; 3 and 4 in a row, so both ranks meet 4


def one_process(tmp_path: Path) -> SkipLog:
    log = SkipLog(tmp_path / "one" / "skipped_samples.jsonl", max_skip_ratio=0.5)
    train(log, list(range(20)), BAD)
    evaluate(log, list(range(7)))
    return log


def two_ranks(tmp_path: Path, steps: int = 5) -> list[SkipLog]:
    """Rank r trains slots r, r + 2, ... (2 per step) and evaluates its share of a padded eval sampler: 7 records
    on 2 ranks, record 0 repeated on rank 1."""
    logs = [SkipLog(tmp_path / "two" / "skipped_samples.jsonl", 0.5, rank=0, data_rank=0),
            SkipLog(None, 0.5, rank=1, data_rank=1)]  # fmt: skip
    for step in range(steps):
        for rank, log in enumerate(logs):
            train(log, [4 * step + rank, 4 * step + rank + 2], BAD)
        exchange(logs)
    evaluate(logs[0], [0, 1, 4, 5])
    evaluate(logs[1], [2, 3, 6, 0])
    return logs


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_two_ranks_report_the_counts_and_skip_lines_of_one_process(tmp_path: Path) -> None:
    one = one_process(tmp_path)
    ranks = two_ranks(tmp_path)
    exchange(ranks)  # before the summary, as `summary` syncs on every rank
    expected = {SOURCE: {"seen": 20, "skipped": 4}, EVAL: {"seen": 7, "skipped": 0}}
    assert one.summary() == expected
    for log in ranks:
        assert log.summary() == expected, f"rank {log.rank}"
        assert sum(log.skipped.values()) == 4, "the logged `skipped` of every rank is the total"
    file = lines(tmp_path / "two" / "skipped_samples.jsonl")
    assert sorted(r["index"] for r in file) == sorted(BAD), "rank 0 writes every rank's skips, each once"
    assert sorted(r["index"] for r in file) == sorted(r["index"] for r in lines(one.path))
    assert {r["reason"] for r in file} == {"image not found"}


def test_ranks_that_share_a_batch_count_it_once(tmp_path: Path) -> None:
    """Tensor or pipeline parallel: ranks 0 and 1 share data-parallel rank 0 and train the same samples."""
    logs = [SkipLog(None, 1.0, rank=r, data_rank=r // 2) for r in range(4)]
    for r, log in enumerate(logs):
        train(log, [r // 2, r // 2 + 2], set())
    exchange(logs)
    assert all(log.summary() == {SOURCE: {"seen": 4, "skipped": 0}} for log in logs)


def test_skip_budget_is_enforced_on_the_totals_of_all_ranks(tmp_path: Path) -> None:
    """Rank 1 alone is over max_skip_ratio 0.25 (12 of 32), all ranks together are not (12 of 64); with rank 0's
    skips added they are (24 of 64), and then every rank stops with the same message."""
    logs = [SkipLog(None, 0.25, rank=r, data_rank=r) for r in range(2)]
    for k in range(12):
        skip(logs[1], 100 + k, replaced=False)
    for _ in range(20):
        logs[1].ok(SOURCE)
    for _ in range(32):
        logs[0].ok(SOURCE)
    exchange(logs)
    for log in logs:
        log.raise_if_exceeded()
    for k in range(12):
        skip(logs[0], 200 + k, replaced=False)
    exchange(logs)
    messages = []
    for log in logs:
        with pytest.raises(UserError, match="24 of 76 samples were skipped") as err:
            log.raise_if_exceeded()
        messages.append(str(err.value))
    assert messages[0] == messages[1]


def test_a_skip_met_on_two_ranks_is_one_line_and_one_count(tmp_path: Path) -> None:
    logs = [SkipLog(tmp_path / "skipped_samples.jsonl", 1.0, rank=0), SkipLog(None, 1.0, rank=1, data_rank=1)]
    for log in logs:  # preflight: every rank reads the same first records
        skip(log, 0, replaced=False)
    exchange(logs)
    train(logs[1], [5], {5})
    exchange(logs)
    train(logs[0], [5], {5})  # already known from rank 1: neither counted nor written again
    exchange(logs)
    assert [r["index"] for r in lines(tmp_path / "skipped_samples.jsonl")] == [0, 5]
    assert all(log.summary() == {SOURCE: {"seen": 3, "skipped": 2}} for log in logs)
