"""Write safetensors checkpoints the way Hugging Face saves big models: bf16, sharded, with an index file.

Used by the loading and merge tests (a tiny model re-saved as sharded bf16) and by benchmarks/real_size.py (a real
model's shapes with random weights, written tensor by tensor so the full model is never in memory). The files are
written by `paddlemix.utils.safetensors_stream.write_sharded`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import numpy as np

from paddlemix.utils import safetensors_stream
from paddlemix.utils.io import MODEL_SIDE_FILES
from paddlemix.utils.safetensors_stream import (
    DTYPE_NAMES,
    FLOAT_CODES,
    checkpoint_entries,
    from_float32,
    read_tensor,
    tensor_nbytes,
    to_float32,
)

# numpy dtype of the data handed to the writer -> safetensors dtype code; bfloat16 travels as its uint16 bits.
DTYPE_CODES = {"float32": "F32", "float16": "F16", "uint16": "BF16", "int64": "I64", "int32": "I32"}


def nbytes(spec: tuple[str, tuple[int, ...]]) -> int:
    """Bytes of one tensor given as (dtype code, shape)."""
    return tensor_nbytes(*spec)


def write_sharded(
    folder: str | Path,
    specs: dict[str, tuple[str, tuple[int, ...]]],
    produce: Callable[[str], np.ndarray],
    num_shards: int,
) -> list[str]:
    """Write `specs` = {name: (dtype code, shape)} over `num_shards` files `model-0000i-of-0000n.safetensors` (names
    in order, about equal bytes per file) plus `model.safetensors.index.json`, as transformers' `save_pretrained`
    does; returns the shard file names. Tensors are made one at a time by `produce(name)` (bf16 as uint16 bits),
    so only one tensor is in memory at once."""
    names = sorted(specs)
    sizes = [nbytes(specs[n]) for n in names]
    bounds = np.searchsorted(np.cumsum(sizes), np.arange(1, num_shards) * sum(sizes) / num_shards)
    shards = [[(names[j], *specs[names[j]]) for j in chunk] for chunk in np.split(np.arange(len(names)), bounds)]

    def write(name: str, f: BinaryIO) -> None:
        value = np.ascontiguousarray(produce(name))
        if tuple(value.shape) != tuple(specs[name][1]) or DTYPE_CODES[value.dtype.name] != specs[name][0]:
            raise ValueError(f"{name}: produced {value.dtype}{list(value.shape)}, declared {specs[name]}")
        f.write(value.tobytes())

    return safetensors_stream.write_sharded(folder, shards, write)


def copy_sharded(src_dir: str | Path, dst_dir: str | Path, shards: int = 3, dtype: str = "bfloat16") -> Path:
    """Copy a model folder with its floating weights cast to `dtype` (rounded to nearest even) and split into
    `shards` files plus model.safetensors.index.json, as transformers saves large checkpoints; config.json names
    the new dtype."""
    src, dst = Path(src_dir), Path(dst_dir)
    dst.mkdir(parents=True, exist_ok=True)
    code = next(c for c, name in DTYPE_NAMES.items() if name == dtype and c in FLOAT_CODES)
    entries = {e.name: e for e in checkpoint_entries(src)}
    specs = {n: (code if e.dtype in FLOAT_CODES else e.dtype, e.shape) for n, e in entries.items()}

    def produce(name: str) -> np.ndarray:
        entry = entries[name]
        value = read_tensor(entry)
        return from_float32(to_float32(value, entry.dtype), code) if entry.dtype in FLOAT_CODES else value

    write_sharded(dst, specs, produce, shards)
    for name in MODEL_SIDE_FILES:
        if (src / name).is_file() and name != "config.json":
            (dst / name).write_bytes((src / name).read_bytes())
    config = json.loads((src / "config.json").read_text())
    config["torch_dtype"] = dtype
    (dst / "config.json").write_text(json.dumps(config, indent=2))
    return dst
