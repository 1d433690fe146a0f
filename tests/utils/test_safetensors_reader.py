"""The plain-read safetensors reader against files written by the safetensors library and by hand (bf16)."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from paddlemix.testing.checkpoints import bf16_bits, bf16_to_float32, write_safetensors
from paddlemix.utils.errors import UserError
from paddlemix.utils.safetensors_reader import read_header, read_tensor


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
    header = read_header(tmp_path / "m.safetensors")
    assert set(header) == set(tensors)
    for name, value in tensors.items():
        got = read_tensor(header[name])
        assert got.dtype == value.dtype and got.shape == value.shape
        np.testing.assert_array_equal(got, value)


def test_bf16_comes_back_as_its_raw_bits(tmp_path: Path) -> None:
    values = np.asarray([1.0, -2.5, 3.140625, 1e-3, 65504.0, -0.0], dtype=np.float32)
    bits = bf16_bits(values)
    write_safetensors(tmp_path / "b.safetensors", {"w": ("BF16", (6,))}, lambda _: bits)
    info = read_header(tmp_path / "b.safetensors")["w"]
    assert info.dtype == "BF16"
    got = read_tensor(info)
    assert got.dtype == np.uint16
    np.testing.assert_array_equal(got, bits)
    # 1.0 is 0x3F80 in bfloat16; the values exact in bf16 survive, 1e-3 is rounded to 8 significant bits.
    assert got[0] == 0x3F80
    np.testing.assert_array_equal(bf16_to_float32(got)[[0, 1, 2, 5]], values[[0, 1, 2, 5]])
    assert abs(bf16_to_float32(got)[3] - 1e-3) < 1e-3 / 128


def test_bf16_rounding_is_nearest_even() -> None:
    # 1 + 2^-8 lies halfway between bf16 neighbours 1 and 1 + 2^-7: ties go to the even one (1.0).
    # 1 + 3 * 2^-8 lies halfway between 1 + 2^-7 (odd) and 1 + 2^-6 (even): rounds up.
    halfway = np.asarray([1 + 2**-8, 1 + 3 * 2**-8, 1 + 2**-8 + 2**-20], dtype=np.float32)
    np.testing.assert_array_equal(bf16_to_float32(bf16_bits(halfway)), [1.0, 1 + 2**-6, 1 + 2**-7])


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
