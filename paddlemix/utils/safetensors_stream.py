"""Read and write safetensors files and model folders tensor by tensor from the raw file layout: any dtype (bfloat16
included) passes through numpy unchanged, nothing is memory-mapped, and memory never holds more than one slice of one
tensor. The one place this toolkit parses or writes the format.

A safetensors file is an 8-byte little-endian header length N, N bytes of JSON
(`{name: {"dtype": "BF16", "shape": [...], "data_offsets": [begin, end]}, "__metadata__": {...}}`), then the data,
offsets counted from the end of the header (https://github.com/huggingface/safetensors, "Format"). Reading with
plain file reads puts only the tensor asked for in memory; a memory map would count every touched page of the file
in the process's resident size. numpy has no bfloat16: BF16 tensors are handled as their raw uint16 bits (the upper
half of a float32), widened to float32 by a 16-bit shift.

A model folder holds its tensors in the shards named by `model.safetensors.index.json`, else in its `*.safetensors`
files (transformers' `save_pretrained` layout).
"""

from __future__ import annotations

import json
import math
import re
import struct
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from paddlemix.utils.errors import UserError
from paddlemix.utils.io import read_json

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
# safetensors dtype code -> bytes per element
DTYPE_SIZES = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U64": 8, "U32": 4, "U16": 2,
    "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1,
}  # fmt: skip
# safetensors dtype code -> numpy storage dtype, for the codes numpy can hold; BF16 is stored as its raw bits.
NUMPY_DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype("<f8"), "F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "BF16": np.dtype("<u2"),
    "I64": np.dtype("<i8"), "I32": np.dtype("<i4"), "I16": np.dtype("<i2"), "I8": np.dtype("i1"),
    "U64": np.dtype("<u8"), "U32": np.dtype("<u4"), "U16": np.dtype("<u2"), "U8": np.dtype("u1"), "BOOL": np.dtype("?"),
}  # fmt: skip
# safetensors dtype code -> the dtype name paddle and config.json (`torch_dtype` / `dtype`) use for it
DTYPE_NAMES = {
    "F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64", "I32": "int32",
    "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool",
}  # fmt: skip
FLOAT_CODES = {"F64", "F32", "F16", "BF16"}
COPY_CHUNK = 64 << 20  # bytes copied at once for tensors passed through unchanged
_MAX_HEADER = 100 << 20  # the format's own limit on the JSON header


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


def tensor_nbytes(dtype: str, shape: Sequence[int]) -> int:
    """Bytes of a tensor of safetensors dtype code `dtype` and `shape`."""
    return math.prod(shape) * DTYPE_SIZES[dtype]


def read_header(path: str | Path) -> tuple[list[TensorEntry], dict[str, str]]:
    """The tensors of a safetensors file in data order, and its `__metadata__`, from the header only.

    Raises:
        UserError: the file is truncated, its header is not JSON, or a tensor has an unknown dtype or offsets that
            do not fit its dtype and shape.
    """
    path = Path(path)
    with open(path, "rb") as f:
        raw = f.read(8)
        length = struct.unpack("<Q", raw)[0] if len(raw) == 8 else -1
        if not 0 < length <= _MAX_HEADER:
            raise UserError(f"{path} is not a safetensors file (bad header length). Re-download or re-save it.")
        try:
            header = json.loads(f.read(length))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise UserError(f"{path}: the safetensors header is not valid JSON ({err}). Re-download it.") from None
    metadata = header.pop("__metadata__", None) or {}
    base, file_size = 8 + length, path.stat().st_size
    entries = []
    for name, v in header.items():
        dtype, shape, (begin, end) = v["dtype"], tuple(v["shape"]), v["data_offsets"]
        if dtype not in DTYPE_SIZES:
            raise UserError(f"{path}: tensor {name} has dtype {dtype}, which is not a safetensors dtype.")
        if not 0 <= begin <= end or end - begin != tensor_nbytes(dtype, shape) or base + end > file_size:
            raise UserError(f"{path}: tensor {name} has offsets {begin}..{end} that do not fit {dtype}{list(shape)}"
                            " or the file is truncated. Re-download or re-save it.")  # fmt: skip
        entries.append(TensorEntry(path, name, dtype, shape, base + begin, base + end))
    return sorted(entries, key=lambda e: e.start), metadata


def read_array(f: BinaryIO, entry: TensorEntry, rows: slice | None = None) -> np.ndarray:
    """The tensor (or a range of its leading-axis rows) from the open file `f` as a fresh numpy array in its storage
    dtype (BF16 as uint16 bits)."""
    if entry.dtype not in NUMPY_DTYPES:
        raise UserError(f"{entry.file}: tensor {entry.name} has dtype {entry.dtype}, which numpy cannot hold.")
    storage, shape, start = NUMPY_DTYPES[entry.dtype], entry.shape, entry.start
    if rows is not None:
        first, stop, _ = rows.indices(shape[0])
        start += first * math.prod(shape[1:]) * storage.itemsize
        shape = (stop - first, *shape[1:])
    f.seek(start)
    return np.fromfile(f, dtype=storage, count=math.prod(shape)).reshape(shape)


def read_tensor(entry: TensorEntry, rows: slice | None = None) -> np.ndarray:
    """`read_array` that opens the tensor's file itself."""
    with open(entry.file, "rb") as f:
        return read_array(f, entry, rows)


def to_float32(array: np.ndarray, dtype: str) -> np.ndarray:
    """Widen a tensor read by `read_array` to float32, exactly (BF16: the uint16 bits become the high half)."""
    if dtype == "BF16":
        return (np.asarray(array).astype(np.uint32) << 16).view(np.float32)
    return array.astype(np.float32)


def from_float32(array: np.ndarray, dtype: str) -> np.ndarray:
    """Narrow float32 values to `dtype`'s numpy layout, rounding to nearest, ties to even (BF16 as torch's
    `Tensor.to(torch.bfloat16)` does, giving uint16 bits; NaN stays a quiet NaN)."""
    if dtype != "BF16":
        return np.asarray(array).astype(NUMPY_DTYPES[dtype])
    bits = np.ascontiguousarray(array, dtype=np.float32).view(np.uint32)
    rounded = ((bits + (0x7FFF + ((bits >> 16) & 1))) >> 16).astype(np.uint16)
    return np.where(np.isnan(array), np.uint16(0x7FC0), rounded)


def read_float32(path: str | Path) -> dict[str, np.ndarray]:
    """Every floating tensor of a (small) safetensors file as float32, whatever its stored float dtype."""
    entries, _ = read_header(path)
    with open(path, "rb") as f:
        return {e.name: to_float32(read_array(f, e), e.dtype) for e in entries if e.dtype in FLOAT_CODES}


def checkpoint_files(
    folder: str | Path, *, prefer_single_file: bool = False, skip: Collection[str] = ()
) -> list[Path]:
    """The safetensors files of a model folder: the shards of `model.safetensors.index.json` in index order, else
    every `*.safetensors` file (sorted) except the names in `skip`; with `prefer_single_file`, `model.safetensors`
    alone when the folder has it and no index.

    Raises:
        UserError: a shard named by the index is missing.
    """
    folder = Path(folder)
    if (folder / INDEX_FILE).is_file():
        weight_map = read_json(folder / INDEX_FILE).get("weight_map") or {}
        files = [folder / name for name in dict.fromkeys(weight_map.values())]
        absent = [f.name for f in files if not f.is_file()]
        if absent:
            raise UserError(f"{folder / INDEX_FILE} names shards that are not in the folder: {', '.join(absent[:3])}."
                            " Copy the missing files or remove the stale index.")  # fmt: skip
        return files
    if prefer_single_file and (folder / SINGLE_FILE).is_file():
        return [folder / SINGLE_FILE]
    return sorted(p for p in folder.glob("*.safetensors") if p.name not in skip)


def checkpoint_entries(
    folder: str | Path, *, prefer_single_file: bool = False, skip: Collection[str] = ()
) -> list[TensorEntry]:
    """The tensors of a model folder's `checkpoint_files` in file order, from the headers only.

    Raises:
        UserError: a shard is missing, a tensor is stored twice, or the index maps a tensor to a shard that does
            not hold it.
    """
    folder = Path(folder)
    entries: list[TensorEntry] = []
    seen: dict[str, Path] = {}
    for path in checkpoint_files(folder, prefer_single_file=prefer_single_file, skip=skip):
        for entry in read_header(path)[0]:
            if entry.name in seen:
                raise UserError(f"{folder}: tensor {entry.name} is stored twice, in {seen[entry.name].name} and "
                                f"{path.name}.")  # fmt: skip
            seen[entry.name] = path
            entries.append(entry)
    if (folder / INDEX_FILE).is_file():
        absent = sorted(set(read_json(folder / INDEX_FILE).get("weight_map") or {}) - set(seen))
        if absent:
            raise UserError(f"{folder / INDEX_FILE} maps {absent[0]} to a shard that does not hold it; the index is "
                            "stale.")  # fmt: skip
    return entries


def safetensors_names(folder: str | Path) -> list[str]:
    """Every tensor name of a model folder (`checkpoint_entries`), sorted, read without loading any tensor."""
    return sorted(e.name for e in checkpoint_entries(folder))


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


# A tensor to write: (name, dtype code, shape). `WriteTensor(name, f)` writes that tensor's bytes to `f`.
TensorSpec = tuple[str, str, tuple[int, ...]]
WriteTensor = Callable[[str, BinaryIO], None]


def write_file(path: str | Path, tensors: Sequence[TensorSpec], write: WriteTensor, metadata: dict[str, str]) -> None:
    """Write one safetensors file: the header for `tensors`, then each tensor's bytes, in order, as `write` gives
    them. Raises ValueError when `write` gives a tensor a byte count other than its dtype and shape say."""
    sized = [(name, dtype, tuple(shape), tensor_nbytes(dtype, shape)) for name, dtype, shape in tensors]
    with open(path, "wb") as f:
        write_header(f, sized, metadata)
        for name, dtype, shape, nbytes in sized:
            begin = f.tell()
            write(name, f)
            if f.tell() - begin != nbytes:
                raise ValueError(
                    f"{path}: {name} took {f.tell() - begin} bytes, but {dtype}{list(shape)} is {nbytes}."
                )


def write_sharded(
    folder: str | Path,
    shards: Sequence[Sequence[TensorSpec]],
    write: WriteTensor,
    metadata: dict[str, str] | None = None,
    done: Callable[[int, str, Sequence[TensorSpec]], None] | None = None,
) -> list[str]:
    """Write a model folder's tensors as the files `shard_names` gives, one per group of `shards`, plus
    `model.safetensors.index.json` when there are several (transformers' `save_pretrained` layout). `done(number,
    file, tensors)` is called after each file. Returns the file names."""
    folder = Path(folder)
    files = list(shard_names(len(shards)))
    for number, (file, tensors) in enumerate(zip(files, shards), 1):
        write_file(folder / file, tensors, write, {"format": "pt"} if metadata is None else metadata)
        if done is not None:
            done(number, file, tensors)
    if len(files) > 1:
        specs = [spec for tensors in shards for spec in tensors]
        weight_map = {name: file for file, tensors in zip(files, shards) for name, _, _ in tensors}
        total = {
            "total_parameters": sum(math.prod(shape) for _, _, shape in specs),
            "total_size": sum(tensor_nbytes(dtype, shape) for _, dtype, shape in specs),
        }
        (folder / INDEX_FILE).write_text(
            json.dumps({"metadata": total, "weight_map": weight_map}, indent=2, sort_keys=True) + "\n",
            encoding="utf-8",
        )
    return files


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
