from __future__ import annotations

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
