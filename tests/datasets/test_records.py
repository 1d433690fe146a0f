"""Data files as people save them: JSON arrays and JSONL with or without a UTF-8 BOM, one pretty-printed object,
a JSONL file with a broken line, and Parquet read by row group."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from paddlemix.datasets import records
from paddlemix.datasets.conversation import SampleError
from paddlemix.datasets.records import RecordFile
from paddlemix.utils.errors import UserError

RECORDS = [{"id": i, "text": f"r{i}"} for i in range(3)]


@pytest.mark.parametrize("bom", [b"", b"\xef\xbb\xbf"], ids=["plain", "bom"])
@pytest.mark.parametrize("layout", ["array", "pretty_array", "jsonl"])
def test_json_and_jsonl_with_or_without_bom(tmp_path: Path, bom: bytes, layout: str) -> None:
    text = {
        "array": json.dumps(RECORDS),
        "pretty_array": json.dumps(RECORDS, indent=2),
        "jsonl": "\n".join(json.dumps(r) for r in RECORDS) + "\n\n",
    }[layout]
    path = tmp_path / "d.json"
    path.write_bytes(bom + text.encode("utf-8"))
    file = RecordFile(path)
    assert [file[i] for i in range(len(file))] == RECORDS


@pytest.mark.parametrize("indent", [None, 2], ids=["one_line", "pretty"])
def test_a_file_with_one_object_is_one_record(tmp_path: Path, indent: int | None) -> None:
    path = tmp_path / "one.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(RECORDS[0], indent=indent).encode())
    file = RecordFile(path)
    assert len(file) == 1 and file[0] == RECORDS[0]


def test_broken_jsonl_lines_are_skips_of_those_lines_only(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text('{"id": 0, "te\n' + json.dumps(RECORDS[1]) + "\n{broken\n")
    file = RecordFile(path)
    assert len(file) == 3 and file[1] == RECORDS[1]
    for i in (0, 2):
        with pytest.raises(SampleError, match="malformed JSON line"):
            file[i]


def test_invalid_json_array_is_a_user_error_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text('[{"id": 0}, {"id": ')
    with pytest.raises(UserError, match=f"data file {path} is not valid JSON"):
        RecordFile(path)


def test_parquet_rows_with_image_structs_read_by_row_group(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(records, "ROW_GROUP_CACHE_BYTES", 1)  # keep one row group only
    rows = [{"images": [{"bytes": bytes([i]) * 3, "path": f"{i}.png"}],
             "messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]}
            for i in range(7)]  # fmt: skip
    path = tmp_path / "d.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=3)
    assert pq.ParquetFile(path).metadata.num_row_groups == 3
    file = RecordFile(path)
    assert len(file) == 7
    for i in (6, 0, 4, 3, 2):  # out of order, across row groups
        assert file[i] == rows[i]
    assert list(file._records._groups) == [0]  # only the row group of the last record read stays cached


def test_unreadable_parquet_is_a_user_error(tmp_path: Path) -> None:
    path = tmp_path / "d.parquet"
    path.write_bytes(b"not parquet at all")
    with pytest.raises(UserError, match="not a readable Parquet file"):
        RecordFile(path)
