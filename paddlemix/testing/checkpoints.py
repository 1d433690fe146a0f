"""Write safetensors checkpoints the way Hugging Face saves big models: bf16, sharded, with an index file.

Used by the loading tests (a tiny model re-saved as sharded bf16) and by benchmarks/real_size.py (a real model's
shapes with random weights, written tensor by tensor so the full model is never in memory).
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from paddlemix.utils.io import write_json

# numpy dtype of the data handed to the writer -> safetensors dtype code; bfloat16 travels as its uint16 bits.
DTYPE_CODES = {"float32": "F32", "float16": "F16", "uint16": "BF16", "int64": "I64", "int32": "I32"}
ITEMSIZE = {"F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4}


def nbytes(spec: tuple[str, tuple[int, ...]]) -> int:
    """Bytes of one tensor given as (dtype code, shape)."""
    return int(np.prod(spec[1], dtype=np.int64)) * ITEMSIZE[spec[0]]


def bf16_bits(values: np.ndarray) -> np.ndarray:
    """float32 values -> bfloat16 bits (uint16), rounded to nearest, ties to even, as torch's `.to(bfloat16)`."""
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    rounding = ((bits >> 16) & 1) + np.uint32(0x7FFF)
    return ((bits + rounding) >> 16).astype(np.uint16)


def bf16_to_float32(bits: np.ndarray) -> np.ndarray:
    """bfloat16 bits (uint16) -> the float32 values they stand for (exact)."""
    return (bits.astype(np.uint32) << 16).view(np.float32)


def write_safetensors(
    path: str | Path,
    specs: dict[str, tuple[str, tuple[int, ...]]],
    produce: Callable[[str], np.ndarray],
    metadata: dict[str, str] | None = None,
) -> None:
    """Write one safetensors file whose tensors `specs` = {name: (dtype code, shape)} are made one at a time by
    `produce(name)` (bf16 as uint16 bits), so only one tensor is in memory at once. Tensors are stored by name."""
    header: dict[str, object] = {"__metadata__": {"format": "pt", **(metadata or {})}}
    offset = 0
    for name in sorted(specs):
        code, shape = specs[name]
        size = nbytes(specs[name])
        header[name] = {"dtype": code, "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the format pads the header so the data starts 8-byte aligned
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        for name in sorted(specs):
            value = np.ascontiguousarray(produce(name))
            if tuple(value.shape) != tuple(specs[name][1]) or DTYPE_CODES[value.dtype.name] != specs[name][0]:
                raise ValueError(f"{name}: produced {value.dtype}{list(value.shape)}, declared {specs[name]}")
            f.write(value.tobytes())


def write_sharded(
    folder: str | Path,
    specs: dict[str, tuple[str, tuple[int, ...]]],
    produce: Callable[[str], np.ndarray],
    num_shards: int,
) -> list[str]:
    """Write `specs` over `num_shards` files `model-0000i-of-0000n.safetensors` (names in order, about equal
    bytes per file) plus `model.safetensors.index.json`, as transformers' `save_pretrained` does; returns the
    shard file names."""
    folder = Path(folder)
    names = sorted(specs)
    sizes = [nbytes(specs[n]) for n in names]
    bounds = np.searchsorted(np.cumsum(sizes), np.arange(1, num_shards) * sum(sizes) / num_shards)
    chunks: Sequence[np.ndarray] = np.split(np.arange(len(names)), bounds)
    files, weight_map = [], {}
    for i, chunk in enumerate(chunks):
        file = f"model-{i + 1:05d}-of-{num_shards:05d}.safetensors"
        part = {names[j]: specs[names[j]] for j in chunk}
        write_safetensors(folder / file, part, produce)
        weight_map.update(dict.fromkeys(part, file))
        files.append(file)
    write_json(
        {"metadata": {"total_size": sum(sizes)}, "weight_map": weight_map}, folder / "model.safetensors.index.json"
    )
    return files
