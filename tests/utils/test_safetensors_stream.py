"""The one safetensors module: headers, whole and row-sliced reads, float32 <-> bf16/f16, model folders (index-aware),
header and sharded writing, shard planning; checked against files the safetensors library writes and reads."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from paddlemix.utils.errors import UserError
from paddlemix.utils.safetensors_stream import (
    checkpoint_entries,
    copy_bytes,
    from_float32,
    parse_size,
    plan_shards,
    read_array,
    read_float32,
    read_header,
    read_tensor,
    safetensors_names,
    shard_names,
    to_float32,
    write_file,
    write_header,
    write_sharded,
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


def test_reads_what_the_safetensors_library_wrote(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    tensors = {
        "a.weight": rng.standard_normal((3, 5)).astype(np.float32),
        "b.half": rng.standard_normal((4,)).astype(np.float16),
        "c.ids": np.arange(6, dtype=np.int64).reshape(2, 3),
        "d.scalar": np.asarray(2.5, dtype=np.float32),
        "e.empty": np.zeros((0, 4), dtype=np.float32),
    }
    save_file(tensors, str(tmp_path / "m.safetensors"))
    header = {e.name: e for e in read_header(tmp_path / "m.safetensors")[0]}
    assert set(header) == set(tensors)
    for name, value in tensors.items():
        got = read_tensor(header[name])
        assert got.dtype == value.dtype and got.shape == value.shape
        np.testing.assert_array_equal(got, value)


def test_bf16_comes_back_as_its_raw_bits(tmp_path: Path) -> None:
    values = np.asarray([1.0, -2.5, 3.140625, 1e-3, 65504.0, -0.0], dtype=np.float32)
    bits = from_float32(values, "BF16")
    write_file(tmp_path / "b.safetensors", [("w", "BF16", (6,))], lambda _, f: f.write(bits.tobytes()), {})
    (info,) = read_header(tmp_path / "b.safetensors")[0]
    assert info.dtype == "BF16"
    got = read_tensor(info)
    assert got.dtype == np.uint16
    np.testing.assert_array_equal(got, bits)
    # 1.0 is 0x3F80 in bfloat16; the values exact in bf16 survive, 1e-3 is rounded to 8 significant bits.
    assert got[0] == 0x3F80
    np.testing.assert_array_equal(to_float32(got, "BF16")[[0, 1, 2, 5]], values[[0, 1, 2, 5]])
    assert abs(to_float32(got, "BF16")[3] - 1e-3) < 1e-3 / 128


def test_bf16_rounding_is_nearest_even() -> None:
    # 1 + 2^-8 lies halfway between bf16 neighbours 1 and 1 + 2^-7: ties go to the even one (1.0).
    # 1 + 3 * 2^-8 lies halfway between 1 + 2^-7 (odd) and 1 + 2^-6 (even): rounds up.
    halfway = np.asarray([1 + 2**-8, 1 + 3 * 2**-8, 1 + 2**-8 + 2**-20], dtype=np.float32)
    np.testing.assert_array_equal(to_float32(from_float32(halfway, "BF16"), "BF16"), [1.0, 1 + 2**-6, 1 + 2**-7])


@pytest.mark.parametrize("damage", ["truncated", "bad_json", "bad_offsets"])
def test_damaged_files_are_user_errors(tmp_path: Path, damage: str) -> None:
    path = tmp_path / "m.safetensors"
    save_file({"w": np.ones((4, 4), np.float32)}, str(path))
    raw = path.read_bytes()
    if damage == "truncated":
        path.write_bytes(raw[:-8])
    elif damage == "bad_json":
        path.write_bytes(raw[:8] + b"{" * struct.unpack("<Q", raw[:8])[0] + raw[8 + struct.unpack("<Q", raw[:8])[0] :])
    else:
        path.write_bytes(raw.replace(b'"data_offsets":[0,64]', b'"data_offsets":[0,60]'))
    with pytest.raises(UserError, match="m.safetensors"):
        read_header(path)


def _two_shards(folder: Path) -> dict[str, str]:
    save_file({"b": np.ones((2, 3), np.float32), "a": np.zeros(4, np.float32)}, str(folder / "s1.safetensors"))
    save_file({"c": np.arange(3, dtype=np.int64)}, str(folder / "s2.safetensors"))
    weight_map = {"a": "s1.safetensors", "b": "s1.safetensors", "c": "s2.safetensors"}
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    return weight_map


def test_folder_is_read_through_its_index(tmp_path: Path) -> None:
    weight_map = _two_shards(tmp_path)
    save_file({"stray": np.ones(1, np.float32)}, str(tmp_path / "other.safetensors"))  # not in the index: ignored
    entries = checkpoint_entries(tmp_path)
    assert {e.name: e.file.name for e in entries} == weight_map
    assert safetensors_names(tmp_path) == ["a", "b", "c"]
    (tmp_path / "model.safetensors.index.json").unlink()
    assert safetensors_names(tmp_path) == ["a", "b", "c", "stray"]
    assert [e.name for e in checkpoint_entries(tmp_path, skip=("other.safetensors",))] == ["a", "b", "c"]


def test_single_file_wins_only_when_asked(tmp_path: Path) -> None:
    save_file({"w": np.ones(2, np.float32)}, str(tmp_path / "model.safetensors"))
    save_file({"lora": np.ones(2, np.float32)}, str(tmp_path / "adapter_model.safetensors"))
    assert [e.name for e in checkpoint_entries(tmp_path, prefer_single_file=True)] == ["w"]
    assert safetensors_names(tmp_path) == ["lora", "w"]


@pytest.mark.parametrize(
    "damage, message",
    [("missing shard", "names shards that are not in the folder: s2.safetensors"),
     ("stale index", "maps d to a shard that does not hold it"),
     ("stored twice", "tensor c is stored twice, in s1.safetensors and s2.safetensors")],
)  # fmt: skip
def test_broken_folders_are_user_errors(tmp_path: Path, damage: str, message: str) -> None:
    weight_map = _two_shards(tmp_path)
    if damage == "missing shard":
        (tmp_path / "s2.safetensors").unlink()
    elif damage == "stale index":
        weight_map["d"] = "s2.safetensors"
    else:
        save_file({"a": np.zeros(4, np.float32), "b": np.ones((2, 3), np.float32), "c": np.ones(1, np.float32)},
                  str(tmp_path / "s1.safetensors"))  # fmt: skip
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    with pytest.raises(UserError, match=message):
        checkpoint_entries(tmp_path)


def test_sharded_writer_gives_what_transformers_saves(tmp_path: Path) -> None:
    tensors = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.ones(4, np.float16), "c": np.arange(2)}
    codes = {"a": "F32", "b": "F16", "c": "I64"}
    shards = [[("a", "F32", (2, 3))], [("b", "F16", (4,)), ("c", "I64", (2,))]]
    done = []
    files = write_sharded(
        tmp_path, shards, lambda n, f: f.write(tensors[n].tobytes()), done=lambda *a: done.append(a[:2])
    )
    assert files == ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"] and done == [
        (1, files[0]), (2, files[1])]  # fmt: skip
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert index == {"metadata": {"total_parameters": 12, "total_size": 48},
                     "weight_map": {"a": files[0], "b": files[1], "c": files[1]}}  # fmt: skip
    loaded = {**load_file(str(tmp_path / files[0])), **load_file(str(tmp_path / files[1]))}
    for name, value in tensors.items():
        np.testing.assert_array_equal(loaded[name], value)
    assert {e.name: e.dtype for e in checkpoint_entries(tmp_path)} == codes


def test_writer_refuses_a_tensor_of_the_wrong_size(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="w took 8 bytes"):
        write_file(tmp_path / "x.safetensors", [("w", "F32", (3,))], lambda _, f: f.write(bytes(8)), {})
