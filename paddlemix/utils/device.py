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


# Paddle's CPU wheels link Intel's MKL (mklml), which takes a generic, slow code path on AMD processors: a float32
# [1024, 2048] x [2048, 11008] matmul on one thread of an AMD EPYC ran at 17 GFLOP/s, and at 55 GFLOP/s with
# MKL_DEBUG_CPU_TYPE=5, which makes that MKL use its AVX2 kernels (PyTorch's own build: 58). MKL reads the variable
# at its first call, so setting it in this process before the model is built is enough. Intel processors keep
# MKL's own choice (it would lose AVX-512 there).
AMD_CPU_ENV = {"MKL_DEBUG_CPU_TYPE": "5"}


def cpu_vendor() -> str:
    """The CPU's vendor id from /proc/cpuinfo ("AuthenticAMD", "GenuineIntel", ...); "" where there is none."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("vendor_id"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def device_env(device: str, vendor: str | None = None) -> dict[str, str]:
    """Set the device's recommended environment where the user has not, log each, and return what was set.

    `vendor`: the CPU vendor id (default: this machine's, `cpu_vendor`); on "AuthenticAMD" MKL gets its AVX2 path
    (`AMD_CPU_ENV`), whatever the training device, since MKL serves every CPU-side matmul.
    """
    recommended = dict(NPU_ENV) if device == "npu" else {}
    if (cpu_vendor() if vendor is None else vendor) == "AuthenticAMD":
        recommended.update(AMD_CPU_ENV)
    chosen = {k: v for k, v in recommended.items() if k not in os.environ}
    for key, value in chosen.items():
        os.environ[key] = value
        logger.info("set %s=%s for %s (export it to override)", key, value, device)
    return chosen
