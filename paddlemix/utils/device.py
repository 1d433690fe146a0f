"""Pick and check the compute device, so a missing GPU or plugin is one clear message instead of a traceback."""

from __future__ import annotations

import logging

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


def set_device(device: str) -> None:
    """Make `device` Paddle's current device, logging the choice."""
    import paddle

    paddle.set_device(device)
    logger.info("device: %s", device)
