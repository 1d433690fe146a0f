"""paddleformers 1.2's PaddleOCR-VL classes, imported and configured so they also run where its GPU-only pieces
are missing (CPU). Every work-around of this family lives here, each with its reason; only 3 changes a GPU run.

1. `paddleformers.triton_kernels.rope_triton` guards `import triton` but decorates a kernel with `@triton.jit` at
   module level, so importing the model without Triton raises `NameError: triton`. When Triton is not installed
   a stand-in module is placed in `sys.modules` for the duration of that one import and removed afterwards: the
   kernel is never called (paddleformers dispatches to it only when `triton.__version__` >= 3 and
   `use_triton_in_paddle` import, which the stand-in's absence after the import makes false). Where Triton is
   installed nothing is replaced.
2. The language model's RMSNorm calls `fused_rms_norm_ext`, which has no CPU kernel: `prepare_config` sets
   `fuse_rms_norm = False` on every device but a CUDA GPU.
3. The vision encoder takes all images of a batch as one sequence and, with its config's eager attention, a dense
   mask over all their patches (memory and time grow with the square of the batch's patches): `prepare_config`
   selects the per-image attention of `paddlemix.models.vision_attention` on every device (same values).
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import sys
import types
from collections.abc import Iterator
from typing import Any

_MODELING = "paddleformers.transformers.paddleocr_vl.modeling"


@contextlib.contextmanager
def _triton_stand_in() -> Iterator[None]:
    """A do-nothing `triton` module while the body runs, only if Triton is not installed (work-around 1)."""
    if importlib.util.find_spec("triton") is not None or "triton" in sys.modules:
        yield
        return
    triton = types.ModuleType("triton")
    language = types.ModuleType("triton.language")
    triton.jit = lambda fn=None, **_: fn if fn is not None else (lambda f: f)
    triton.__version__ = "0.0.0"  # below 3: paddleformers' availability check says no
    language.constexpr = int
    triton.language = language
    sys.modules.update({"triton": triton, "triton.language": language})
    try:
        yield
    finally:
        sys.modules.pop("triton", None)
        sys.modules.pop("triton.language", None)


def modeling() -> types.ModuleType:
    """paddleformers' `paddleocr_vl.modeling` module, imported once (with the Triton stand-in where needed)."""
    if _MODELING in sys.modules:
        return sys.modules[_MODELING]
    with _triton_stand_in():
        return importlib.import_module(_MODELING)


def prepare_config(config: Any, device: str) -> None:
    """Use the unfused RMSNorm where the fused kernel is missing (work-around 2; every device but CUDA GPUs) and
    the vision encoder's attention per image (work-around 3)."""
    from paddlemix.models import vision_attention  # imports Paddle: not at module level (the merge tool needs none)

    if device != "gpu":
        config.fuse_rms_norm = False
        config.vision_config.fuse_rms_norm = False
    vision_attention.select(config.vision_config)
