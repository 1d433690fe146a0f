from __future__ import annotations

import os

import paddle
import pytest

from paddlemix.utils.device import resolve_device
from paddlemix.utils.errors import UserError


def test_cpu_always_works_and_default_picks_an_available_device() -> None:
    assert resolve_device("cpu") == "cpu"
    expected = "gpu" if paddle.device.is_compiled_with_cuda() and paddle.device.cuda.device_count() else "cpu"
    assert resolve_device(None) == expected


@pytest.mark.parametrize("device, hint", [("gpu", "paddlepaddle-gpu"), ("npu", "paddle-custom-npu"), ("xpu", "XPU")])
def test_missing_accelerator_is_a_clear_error(device: str, hint: str) -> None:
    if device == "gpu" and paddle.device.is_compiled_with_cuda() and paddle.device.cuda.device_count():
        pytest.skip("a GPU is present")
    if device == "npu" and "npu" in paddle.device.get_all_custom_device_type():
        pytest.skip("the NPU plugin is present")
    if device == "xpu" and paddle.device.is_compiled_with_xpu():
        pytest.skip("an XPU build is present")
    with pytest.raises(UserError, match=hint):
        resolve_device(device)


def test_npu_env_fills_in_only_what_the_user_did_not_set(monkeypatch) -> None:
    from paddlemix.utils.device import NPU_ENV, device_env

    for key in NPU_ENV:  # set then delete, so the test's teardown removes what device_env exports
        monkeypatch.setenv(key, "")
        monkeypatch.delenv(key)
    monkeypatch.setenv("FLAGS_npu_jit_compile", "1")
    assert device_env("cpu", vendor="GenuineIntel") == {}
    chosen = device_env("npu", vendor="GenuineIntel")
    assert "FLAGS_npu_jit_compile" not in chosen and os.environ["FLAGS_npu_jit_compile"] == "1"
    assert (
        chosen["FLAGS_npu_storage_format"] == "0"
        and os.environ["CUSTOM_DEVICE_BLACK_LIST"] == NPU_ENV["CUSTOM_DEVICE_BLACK_LIST"]
    )
    assert set(chosen) == set(NPU_ENV) - {"FLAGS_npu_jit_compile"}


def test_amd_cpu_gets_mkl_avx2_path_unless_the_user_chose(monkeypatch) -> None:
    from paddlemix.utils.device import AMD_CPU_ENV, device_env

    monkeypatch.setenv("MKL_DEBUG_CPU_TYPE", "")
    monkeypatch.delenv("MKL_DEBUG_CPU_TYPE")
    assert device_env("cpu", vendor="GenuineIntel") == {}
    assert "MKL_DEBUG_CPU_TYPE" not in os.environ
    assert device_env("cpu", vendor="AuthenticAMD") == AMD_CPU_ENV
    assert os.environ["MKL_DEBUG_CPU_TYPE"] == "5"
    monkeypatch.setenv("MKL_DEBUG_CPU_TYPE", "4")
    assert device_env("gpu", vendor="AuthenticAMD") == {}
    assert os.environ["MKL_DEBUG_CPU_TYPE"] == "4"
