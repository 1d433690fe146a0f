"""Read tensors out of `.safetensors` files one at a time, with plain file reads (no memory map, no pickle).

A safetensors file is an 8-byte little-endian header length, a JSON header
`{name: {"dtype": "BF16", "shape": [..], "data_offsets": [begin, end]}, "__metadata__": {...}}`, then the raw
little-endian tensor bytes (offsets are relative to the end of the header). Format:
https://github.com/huggingface/safetensors#format. Reading with `np.fromfile` puts only the tensor asked for in
memory; a memory map would count every touched page of the file in the process's resident size.

numpy has no bfloat16: BF16 tensors are returned as their raw `uint16` bits (the upper half of a float32), which
`paddlemix.models.loading` turns into paddle bfloat16 tensors without rounding.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from paddlemix.utils.errors import UserError

# safetensors dtype -> numpy storage dtype; BF16 is stored as its raw bits.
STORAGE_DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"),
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}
# safetensors dtype -> the paddle dtype name it loads as.
PADDLE_DTYPES = {
    "F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64", "I32": "int32",
    "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool",
}  # fmt: skip
_MAX_HEADER = 100 << 20  # the format's own limit on the JSON header


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives: `dtype` is the safetensors code ("BF16", "F32", ...), `begin` the absolute byte
    offset of its data in `file`, `shape` its shape."""

    file: Path
    dtype: str
    shape: tuple[int, ...]
    begin: int
    nbytes: int


def read_header(path: str | Path) -> dict[str, TensorInfo]:
    """The tensors of one safetensors file by name, from its header only (no tensor data is read).

    Raises:
        UserError: the file is truncated, its header is not valid JSON, or a tensor has an unknown dtype or
            inconsistent offsets.
    """
    path = Path(path)
    with open(path, "rb") as f:
        raw = f.read(8)
        size = struct.unpack("<Q", raw)[0] if len(raw) == 8 else -1
        if not 0 < size <= _MAX_HEADER:
            raise UserError(f"{path} is not a safetensors file (bad header length). Re-download or re-save it.")
        try:
            header = json.loads(f.read(size))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise UserError(f"{path}: the safetensors header is not valid JSON ({err}).") from None
    data_start, file_size = 8 + size, path.stat().st_size
    tensors: dict[str, TensorInfo] = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        dtype, shape, (begin, end) = entry["dtype"], tuple(entry["shape"]), entry["data_offsets"]
        if dtype not in STORAGE_DTYPES:
            raise UserError(f"{path}: tensor {name} has dtype {dtype}, which this loader cannot read.")
        nbytes = int(np.prod(shape, dtype=np.int64)) * STORAGE_DTYPES[dtype].itemsize
        if end - begin != nbytes or data_start + end > file_size:
            raise UserError(f"{path}: tensor {name} has offsets {begin}..{end} that do not fit {dtype}{list(shape)}"
                            " or the file is truncated. Re-download or re-save it.")  # fmt: skip
        tensors[name] = TensorInfo(path, dtype, shape, data_start + begin, nbytes)
    return tensors


def read_tensor(info: TensorInfo) -> np.ndarray:
    """One tensor's data as a fresh numpy array in its storage dtype (`uint16` bits for BF16)."""
    storage = STORAGE_DTYPES[info.dtype]
    with open(info.file, "rb") as f:
        f.seek(info.begin)
        data = np.fromfile(f, dtype=storage, count=info.nbytes // storage.itemsize)
    return data.reshape(info.shape)
