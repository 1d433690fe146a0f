"""Pick and check the compute device, so a missing GPU or plugin is one clear message instead of a traceback."""

from __future__ import annotations

import logging
import os

from paddlemix.utils.errors import UserError

logger = logging.getLogger(__name__)

PLUGINS = {
    "gpu": "install paddlepaddle-gpu (a CUDA build of Paddle) instead of paddlepaddle",
    "xpu": "install the XPU build of paddlepaddle",
    "npu": "install paddle-custom-npu (Paddle's Ascend NPU plugin) next to paddlepaddle",
}


def resolve_device(requested: str | None) -> str:
    """Return the device to train on: the requested one if usable, else 'gpu' when present, else 'cpu'."""
    import paddle

    if requested is None:
        return "gpu" if paddle.device.is_compiled_with_cuda() and paddle.device.cuda.device_count() > 0 else "cpu"
    if requested == "cpu":
        return "cpu"
    available = _available(requested)
    if not available:
        raise UserError(
            f'device "{requested}" is not usable with this Paddle installation: {PLUGINS[requested]}, '
            'check that the hardware is visible to this process, or set "device": "cpu".'
        )
    return requested


def _available(device: str) -> bool:
    import paddle

    if device == "gpu":
        return paddle.device.is_compiled_with_cuda() and paddle.device.cuda.device_count() > 0
    if device == "xpu":
        return paddle.device.is_compiled_with_xpu()
    return device in paddle.device.get_all_custom_device_type()


# Settings PaddleMIX documents for Ascend NPUs: no private storage format or JIT compilation, aclnn kernels, and
# set_value kept off the device for accuracy. A value the user already exported always wins.
NPU_ENV = {
    "FLAGS_use_stride_kernel": "0",
    "FLAGS_npu_storage_format": "0",
    "FLAGS_npu_jit_compile": "0",
    "FLAGS_npu_scale_aclnn": "True",
    "FLAGS_npu_split_aclnn": "True",
    "CUSTOM_DEVICE_BLACK_LIST": "set_value,set_value_with_tensor",
}


def device_env(device: str) -> dict[str, str]:
    """Set the device's recommended environment where the user has not, log each, and return what was set."""
    chosen = {k: v for k, v in (NPU_ENV if device == "npu" else {}).items() if k not in os.environ}
    for key, value in chosen.items():
        os.environ[key] = value
        logger.info("set %s=%s for %s (export it to override)", key, value, device)
    return chosen
