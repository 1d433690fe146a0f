"""Tensors of a base checkpoint that the model does not hold, carried unchanged into the full model saved from it.

A released checkpoint can hold tensors that no forward pass reads and that neither paddleformers' nor transformers'
model has as a parameter, such as SigLIP's attention-pooling head in PaddleOCR-VL (`visual.vision_model.head.*`).
The loader leaves them out of the model; a full fine-tune's export would then lack them, and a server that checks
the checkpoint against the released layout (vLLM) refuses such a folder (PaddleFormers #3680). So a full save is the
model's exported tensors plus every base tensor they do not name, copied byte for byte from the base files, one
chunk at a time (never read whole). The merge tool copies every base tensor it does not change already.

Which base tensors are carried is decided on names only: a base tensor is carried when its name, mapped by the
family's `parameter_name` (either transformers generation's spelling -> one name), is not among the exported
names mapped the same way, and it is not the head of a model whose head is its embedding table (the export leaves
a tied head out on purpose, as transformers saves it).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

from paddlemix.utils.safetensors_stream import NUMPY_DTYPES, TensorEntry, checkpoint_entries, copy_bytes, write_file

logger = logging.getLogger(__name__)

HEAD = "lm_head.weight"
# numpy dtype -> safetensors dtype code, the inverse of the reader's table; exports hold float32 and integer arrays
# (`utils.io.to_numpy` widens bf16), so BF16's raw-bits storage (uint16) is left to U16
_CODES = {dtype: code for code, dtype in NUMPY_DTYPES.items() if code != "BF16"}


def carried_tensors(
    base_dir: str | Path, exported: set[str], parameter_name: Callable[[str], str], tied_head: bool = False
) -> list[TensorEntry]:
    """The tensors of `base_dir`'s safetensors (in file order) that the export does not name.

    Args:
        exported: the names the export writes.
        parameter_name: the family's checkpoint name -> canonical name (`ModelAdapter.parameter_name`).
        tied_head: the model's head is its embedding table; a base `lm_head.weight` is then not carried.
    Returns:
        [] when the folder has no safetensors (nothing to carry).
    """
    base = Path(base_dir)
    if not any(base.glob("*.safetensors")):
        return []
    names = {parameter_name(n) for n in exported}
    skip = {parameter_name(HEAD)} if tied_head else set()
    return [e for e in checkpoint_entries(base) if parameter_name(e.name) not in names | skip]


def save_with_carried(weights: Mapping[str, np.ndarray], carried: list[TensorEntry], path: str | Path) -> None:
    """Write `weights` and then the `carried` base tensors (their bytes and dtype unchanged) as one safetensors
    file at `path`, with transformers' `{"format": "pt"}` metadata."""
    arrays = {name: np.ascontiguousarray(value) for name, value in weights.items()}
    specs = [(name, _CODES[a.dtype], a.shape) for name, a in arrays.items()]
    specs += [(e.name, e.dtype, e.shape) for e in carried]
    by_name = {e.name: e for e in carried}

    def write(name: str, f) -> None:
        if name in arrays:
            f.write(arrays[name].tobytes())
            return
        entry = by_name[name]
        with open(entry.file, "rb") as src:
            copy_bytes(src, entry, f)

    write_file(path, specs, write, {"format": "pt"})


def log_carried(carried: list[TensorEntry], base_dir: str | Path) -> None:
    """One line: how many base tensors were carried, with the first names."""
    if carried:
        names = ", ".join(e.name for e in carried[:3]) + (", ..." if len(carried) > 3 else "")
        logger.info("carried %d tensor(s) of %s that the model does not hold unchanged into the saved model: %s",
                    len(carried), base_dir, names)  # fmt: skip
