from __future__ import annotations

from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from paddlemix.utils.errors import UserError
from paddlemix.utils.safetensors_stream import (
    copy_bytes,
    from_float32,
    parse_size,
    plan_shards,
    read_array,
    read_float32,
    read_header,
    shard_names,
    to_float32,
    write_header,
)


def test_bfloat16_rounding_matches_ml_dtypes_including_ties_and_specials() -> None:
    rng = np.random.default_rng(0)
    values = np.concatenate([
        rng.normal(0, 1, 10000).astype(np.float32),
        rng.normal(0, 1e-30, 1000).astype(np.float32),
        # exact ties between two bfloat16 values (low 16 bits 0x8000), both parities of the kept bit
        np.array([0x3F808000, 0x3F818000, 0xBF808000, 0x7F7FFFFF, 0x00008000], dtype=np.uint32).view(np.float32),
        np.array([np.inf, -np.inf, 0.0, -0.0, 3.0e38], dtype=np.float32),
    ])  # fmt: skip
    expected = values.astype(ml_dtypes.bfloat16).view(np.uint16)
    np.testing.assert_array_equal(from_float32(values, "BF16"), expected)
    assert np.isnan(to_float32(from_float32(np.array([np.nan], np.float32), "BF16"), "BF16")).all()
    # widening is exact
    np.testing.assert_array_equal(to_float32(expected, "BF16"), values.astype(ml_dtypes.bfloat16).astype(np.float32))


def test_header_and_arrays_read_as_safetensors_writes_them(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    tensors = {
        "b": rng.normal(size=(5, 3)).astype(ml_dtypes.bfloat16),
        "a": rng.normal(size=(4,)).astype(np.float16),
        "i": np.arange(6, dtype=np.int64).reshape(2, 3),
    }
    save_file(tensors, str(tmp_path / "x.safetensors"), metadata={"format": "pt"})
    entries, metadata = read_header(tmp_path / "x.safetensors")
    assert metadata == {"format": "pt"} and {e.name: (e.dtype, e.shape) for e in entries} == {
        "b": ("BF16", (5, 3)), "a": ("F16", (4,)), "i": ("I64", (2, 3))}  # fmt: skip
    by_name = {e.name: e for e in entries}
    with open(tmp_path / "x.safetensors", "rb") as f:
        rows = read_array(f, by_name["b"], slice(1, 4))
    np.testing.assert_array_equal(rows, tensors["b"][1:4].view(np.uint16))
    floats = read_float32(tmp_path / "x.safetensors")
    assert set(floats) == {"a", "b"}
    np.testing.assert_array_equal(floats["b"], tensors["b"].astype(np.float32))


def test_written_file_loads_in_safetensors(tmp_path: Path) -> None:
    src = {"w": np.arange(12, dtype=np.float32).reshape(3, 4), "v": np.ones(3, dtype=ml_dtypes.bfloat16)}
    save_file(src, str(tmp_path / "src.safetensors"))
    entries, _ = read_header(tmp_path / "src.safetensors")
    with open(tmp_path / "src.safetensors", "rb") as f, open(tmp_path / "out.safetensors", "wb") as out:
        write_header(out, [(e.name, e.dtype, e.shape, e.nbytes) for e in entries], {"format": "pt"})
        for e in entries:
            copy_bytes(f, e, out)
    loaded = load_file(str(tmp_path / "out.safetensors"))
    np.testing.assert_array_equal(loaded["w"], src["w"])
    np.testing.assert_array_equal(loaded["v"].view(np.uint16), src["v"].view(np.uint16))


@pytest.mark.parametrize(
    "size, expected",
    [("5GB", 5 * 10**9), ("500MB", 500 * 10**6), ("2GiB", 2 * 2**30), ("1.5mb", 1_500_000), (123, 123), ("77", 77)],
)
def test_parse_size(size, expected) -> None:
    assert parse_size(size) == expected


@pytest.mark.parametrize("size", ["five GB", "5XB", "", 0])
def test_bad_size_is_user_error(size) -> None:
    with pytest.raises(UserError, match="max_shard_size"):
        parse_size(size)


def test_plan_shards_fills_in_order_and_isolates_oversized_tensors() -> None:
    sizes = [("a", 40), ("b", 50), ("c", 20), ("big", 300), ("d", 90), ("e", 10), ("f", 1)]
    # a shard closes when the next tensor would pass the limit; an oversized tensor is a shard of its own
    assert plan_shards(sizes, 100) == [["a", "b"], ["big"], ["c"], ["d", "e"], ["f"]]
    assert plan_shards(sizes, 10**9) == [[name for name, _ in sizes]]
    assert list(shard_names(1)) == ["model.safetensors"]
    assert list(shard_names(2)) == ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
