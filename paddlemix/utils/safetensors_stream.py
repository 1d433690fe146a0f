"""safetensors read and written tensor by tensor from the raw file layout, so any dtype (bfloat16 included) passes
through numpy unchanged and memory never holds more than one slice of one tensor.

A safetensors file is an 8-byte little-endian header length N, N bytes of JSON
(`{name: {"dtype": "BF16", "shape": [...], "data_offsets": [begin, end]}, "__metadata__": {...}}`), then the data,
offsets counted from the end of the header (https://github.com/huggingface/safetensors, "Format").
numpy has no bfloat16: BF16 tensors are handled as their raw uint16 bits and widened to float32 by a 16-bit shift.
"""

from __future__ import annotations

import json
import math
import re
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from paddlemix.utils.errors import UserError

# safetensors dtype code -> bytes per element
DTYPE_SIZES = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U64": 8, "U32": 4, "U16": 2,
    "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1,
}  # fmt: skip
FLOAT_CODES = {"F64", "F32", "F16", "BF16"}
# safetensors dtype code -> the name config.json uses for it (`torch_dtype` / `dtype`)
CONFIG_DTYPE_NAMES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16"}
_NUMPY = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "BF16": "<u2"}
COPY_CHUNK = 64 << 20  # bytes copied at once for tensors the merge leaves unchanged


@dataclass(frozen=True)
class TensorEntry:
    """Where one tensor lives: file, dtype code, shape and the absolute byte range of its data."""

    file: Path
    name: str
    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.start


def read_header(path: str | Path) -> tuple[list[TensorEntry], dict[str, str]]:
    """The tensors of a safetensors file in data order, and its `__metadata__`; a broken file is a UserError."""
    path = Path(path)
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise UserError(f"{path} is not a safetensors file (shorter than its 8-byte header length).")
        (length,) = struct.unpack("<Q", raw)
        try:
            header = json.loads(f.read(length))
        except (json.JSONDecodeError, UnicodeDecodeError, MemoryError):
            raise UserError(f"{path} is not a safetensors file (its header is not JSON); re-download it.") from None
    metadata = header.pop("__metadata__", None) or {}
    base = 8 + length
    entries = [
        TensorEntry(
            path, name, v["dtype"], tuple(v["shape"]), base + v["data_offsets"][0], base + v["data_offsets"][1]
        )
        for name, v in header.items()
    ]
    for e in entries:
        if e.dtype not in DTYPE_SIZES or e.nbytes != math.prod(e.shape) * DTYPE_SIZES[e.dtype]:
            raise UserError(
                f"{path}: tensor {e.name} has dtype {e.dtype} and shape {e.shape} that do not fit its data."
            )
    return sorted(entries, key=lambda e: e.start), metadata


def read_array(f: BinaryIO, entry: TensorEntry, rows: slice | None = None) -> np.ndarray:
    """The tensor (or a range of its leading-axis rows) as a numpy array; BF16 comes back as uint16 bits."""
    if entry.dtype not in _NUMPY:
        raise UserError(f"{entry.file}: tensor {entry.name} has dtype {entry.dtype}, which cannot be merged.")
    shape = entry.shape
    start, count = entry.start, math.prod(shape)
    if rows is not None:
        row = math.prod(shape[1:]) * DTYPE_SIZES[entry.dtype]
        first, stop, _ = rows.indices(shape[0])
        start, shape = start + first * row, (stop - first, *shape[1:])
        count = math.prod(shape)
    f.seek(start)
    return np.frombuffer(f.read(count * DTYPE_SIZES[entry.dtype]), dtype=_NUMPY[entry.dtype]).reshape(shape)


def to_float32(array: np.ndarray, dtype: str) -> np.ndarray:
    """Widen a tensor read by `read_array` to float32 (BF16: the uint16 bits become the high half of a float32)."""
    if dtype == "BF16":
        return (array.astype(np.uint32) << 16).view(np.float32)
    return array.astype(np.float32)


def from_float32(array: np.ndarray, dtype: str) -> np.ndarray:
    """Narrow float32 values to `dtype`'s numpy layout; BF16 rounds to nearest, ties to even (as torch's
    `Tensor.to(torch.bfloat16)` does), and NaN stays a quiet NaN."""
    if dtype != "BF16":
        return array.astype(_NUMPY[dtype])
    bits = np.ascontiguousarray(array, dtype=np.float32).view(np.uint32)
    rounded = ((bits + (0x7FFF + ((bits >> 16) & 1))) >> 16).astype(np.uint16)
    return np.where(np.isnan(array), np.uint16(0x7FC0), rounded)


def read_float32(path: str | Path) -> dict[str, np.ndarray]:
    """Every floating tensor of a (small) safetensors file as float32, whatever its stored float dtype."""
    entries, _ = read_header(path)
    with open(path, "rb") as f:
        return {e.name: to_float32(read_array(f, e), e.dtype) for e in entries if e.dtype in FLOAT_CODES}


def copy_bytes(src: BinaryIO, entry: TensorEntry, dst: BinaryIO) -> None:
    """Copy a tensor's data unchanged, `COPY_CHUNK` bytes at a time."""
    src.seek(entry.start)
    left = entry.nbytes
    while left:
        chunk = src.read(min(left, COPY_CHUNK))
        if not chunk:
            raise UserError(f"{entry.file} is truncated inside tensor {entry.name}; re-download it.")
        dst.write(chunk)
        left -= len(chunk)


def write_header(f: BinaryIO, entries: list[tuple[str, str, tuple[int, ...], int]], metadata: dict[str, str]) -> None:
    """Write the header of a safetensors file whose tensors (name, dtype, shape, nbytes) follow in this order.

    The JSON is padded with spaces to a multiple of 8 bytes, as the reference writer does, so data stays aligned.
    """
    header: dict[str, object] = {"__metadata__": metadata} if metadata else {}
    offset = 0
    for name, dtype, shape, nbytes in entries:
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    f.write(struct.pack("<Q", len(raw)) + raw)


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]I?B|B)?\s*$", re.IGNORECASE)
_UNITS = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}  # fmt: skip


def parse_size(size: int | str) -> int:
    """Bytes of a size such as 5000000, "500MB", "2GB" or "1GiB" (transformers' convention: KB/MB/GB are powers of
    10, KiB/MiB/GiB powers of 2). Raises UserError for anything else or a size under 1 byte."""
    if isinstance(size, int):
        value = size
    else:
        match = _SIZE.match(size)
        if not match:
            raise UserError(f'max_shard_size "{size}" is not a size; use bytes (1000000) or "500MB", "5GB", "2GiB".')
        value = int(float(match.group(1)) * _UNITS[(match.group(2) or "B").upper()])
    if value < 1:
        raise UserError(f"max_shard_size {size!r} must be at least 1 byte.")
    return value


def plan_shards(sizes: list[tuple[str, int]], max_shard_size: int) -> list[list[str]]:
    """Group tensors (name, nbytes), in order, into shards of at most `max_shard_size` bytes; a tensor larger than
    that gets a shard of its own (huggingface_hub's `split_state_dict_into_shards_factory` rule)."""
    shards: list[list[str]] = []
    current: list[str] = []
    filled = 0
    for name, nbytes in sizes:
        if nbytes > max_shard_size:
            shards.append([name])
            continue
        if current and filled + nbytes > max_shard_size:
            shards.append(current)
            current, filled = [], 0
        current.append(name)
        filled += nbytes
    if current:
        shards.append(current)
    return shards


def shard_names(count: int, prefix: str = "model") -> Iterator[str]:
    """File names transformers gives `count` shards: model.safetensors, or model-00001-of-0000N.safetensors."""
    if count == 1:
        yield f"{prefix}.safetensors"
        return
    for i in range(count):
        yield f"{prefix}-{i + 1:05d}-of-{count:05d}.safetensors"
