"""Random access to the records of one data file: a JSON array, a single JSON object, JSONL, or Parquet.

JSON and JSONL may start with a UTF-8 byte-order mark. JSONL is indexed by byte offset and each line is parsed on
access; Parquet is read lazily, one row group at a time, keeping the row groups read last up to
`ROW_GROUP_CACHE_BYTES` per process, so a large file costs bounded memory. A whole-file problem (invalid JSON array, unreadable Parquet) is a UserError; a bad line
or row is a `SampleError` for that record only.
"""

from __future__ import annotations

import bisect
import json
from collections import OrderedDict
from pathlib import Path
from typing import Any

from paddlemix.datasets.conversation import SampleError
from paddlemix.utils.errors import UserError

BOM = b"\xef\xbb\xbf"
PARQUET_SUFFIXES = (".parquet", ".pq")
# Shuffled access meets a new row group at almost every record; caching recent ones (at least one) saves re-reads.
ROW_GROUP_CACHE_BYTES = 256 * 2**20


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8-sig"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"data file {path} is not valid JSON: {err}. Fix the file or save it as JSONL.") from None


def _first_line_is_json(path: Path) -> bool:
    """True when the first non-empty line is a complete JSON value on its own (JSONL); False when the file holds one
    JSON value spread over several lines."""
    with open(path, "rb") as f:
        for line in f:
            if line.strip(BOM + b" \t\r\n"):
                try:
                    json.loads(line.decode("utf-8-sig"))
                    return True
                except (json.JSONDecodeError, UnicodeDecodeError):
                    return False
    return True


class JsonRecords:
    """A JSON array (its items) or a single JSON object (one record), parsed once."""

    def __init__(self, path: Path):
        data = _read_json(path)
        self.records = data if isinstance(data, list) else [data]

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> Any:
        return self.records[i]


class JsonlRecords:
    """One JSON value per line; blank lines are not records."""

    def __init__(self, path: Path):
        self.path = path
        self.offsets: list[int] = []
        pos = 0
        with open(path, "rb") as f:
            for line in f:
                if line.strip(BOM + b" \t\r\n"):
                    self.offsets.append(pos)
                pos += len(line)

    def __len__(self) -> int:
        return len(self.offsets)

    def __getitem__(self, i: int) -> Any:
        with open(self.path, "rb") as f:
            f.seek(self.offsets[i])
            line = f.readline()
        try:
            return json.loads(line.decode("utf-8-sig"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise SampleError(f"malformed JSON line: {err}") from None


class ParquetRecords:
    """Rows of a Parquet file as dicts (structs become dicts, binary columns bytes), read by row group."""

    def __init__(self, path: Path):
        import pyarrow.parquet as pq

        self.path = path
        try:
            meta = pq.ParquetFile(path).metadata
        except Exception as err:  # pyarrow raises ArrowInvalid, OSError, ... for a file it cannot read
            raise UserError(f"data file {path} is not a readable Parquet file: {err}") from None
        self.starts, total = [], 0
        for k in range(meta.num_row_groups):
            self.starts.append(total)
            total += meta.row_group(k).num_rows
        self._len = total
        self._groups: OrderedDict[int, Any] = OrderedDict()
        self._file: Any = None

    def __len__(self) -> int:
        return self._len

    def _group(self, k: int) -> Any:
        if k not in self._groups:
            import pyarrow.parquet as pq

            if self._file is None:  # opened on first use, so each data-loader worker has its own handle
                self._file = pq.ParquetFile(self.path)
            self._groups[k] = self._file.read_row_group(k)
            while len(self._groups) > 1 and sum(t.nbytes for t in self._groups.values()) > ROW_GROUP_CACHE_BYTES:
                self._groups.popitem(last=False)
        self._groups.move_to_end(k)
        return self._groups[k]

    def __getitem__(self, i: int) -> Any:
        k = bisect.bisect_right(self.starts, i) - 1
        return self._group(k).slice(i - self.starts[k], 1).to_pylist()[0]

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_file": None, "_groups": OrderedDict()}


class RecordFile:
    """Random access to the records of one data file, whatever its format (see the module docstring)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if self.path.suffix.lower() in PARQUET_SUFFIXES:
            self._records: Any = ParquetRecords(self.path)
            return
        with open(self.path, "rb") as f:
            head = f.read(64).lstrip(BOM).lstrip()
        if head.startswith(b"["):
            self._records = JsonRecords(self.path)
        elif _first_line_is_json(self.path):
            self._records = JsonlRecords(self.path)
        else:  # one pretty-printed object, or JSONL whose first line is broken (a skip of that line only)
            try:
                self._records = JsonRecords(self.path)
            except UserError:
                self._records = JsonlRecords(self.path)

    def __len__(self) -> int:
        return len(self._records)

    def __getitem__(self, i: int) -> Any:
        return self._records[i]
