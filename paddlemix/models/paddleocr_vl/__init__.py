"""PaddleOCR-VL (v1, 1.5, 1.6) through paddleformers: a SigLIP-style NaViT vision tower (`visual.*`), a 2x2 patch
merger MLP (`mlp_AR.*`) and an ERNIE-4.5 language model (`model.*`, `lm_head`).

Checkpoints keep the original layout: `visual.vision_model.*`, `mlp_AR.*`, `model.*`, `lm_head.weight`; paddleformers
names its parameters the same and fuses nothing, so loading only transposes Linear weights ([out, in] in the file,
[in, out] in Paddle). transformers 5.x names the same tensors `model.visual.*`, `model.projector.*` and
`model.language_model.*` in memory; folders it saves (and the conversion it applies on load) use the original
names, which `paddle_name` also accepts. `visual.vision_model.embeddings.packing_position_embedding` is not used
by the forward pass but is loaded and exported like every tensor: vLLM refuses checkpoints without it.
CPU work-arounds are in `compat`; version templates in `templates`.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from paddlemix.models.adapter import ModelAdapter
from paddlemix.models.hf_layout import LM_LORA_TARGETS, _is_linear
from paddlemix.models.paddleocr_vl.compat import prepare_config
from paddlemix.models.paddleocr_vl.positions import positions

logger = logging.getLogger(__name__)
_MODEL = "paddlemix.models.paddleocr_vl.modeling"
# Rows of `packing_position_embedding` in every released checkpoint (paddleformers builds it with this size).
PACKING_POSITIONS = 32768

# transformers 5.x's in-memory prefixes -> the checkpoint's (original) ones, most specific first.
_HF5_PREFIXES = (("model.projector.", "mlp_AR."), ("model.visual.", "visual."), ("model.language_model.", "model."))


def paddle_name(name: str) -> str:
    """A checkpoint name (original or transformers 5.x's in-memory spelling) -> the Paddle parameter name."""
    for theirs, ours in _HF5_PREFIXES:
        if name.startswith(theirs):
            return ours + name[len(theirs) :]
    return name


def hf5_name(name: str) -> str:
    """A Paddle module or parameter path (the checkpoint's original name) -> transformers 5.x's in-memory name, the
    names PEFT on transformers 5.x writes adapters with and loads them by (it renames the language model's LoRA
    keys of an original-name adapter, but not the vision tower's nor fully trained modules)."""
    for theirs, ours in _HF5_PREFIXES:
        if name.startswith(ours) or name == ours.rstrip("."):
            return theirs + name[len(ours) :] if name.startswith(ours) else theirs.rstrip(".")
    return name


PACKING_TABLE = "visual.vision_model.embeddings.packing_position_embedding.weight"
PATCH_EMBEDDING = "visual.vision_model.embeddings.patch_embedding.weight"
EMBEDDINGS = "model.embed_tokens.weight"
# Tensors of released checkpoints that neither paddleformers' nor transformers' model has (SigLIP's pooling head).
UNUSED = ("visual.vision_model.head.",)


def from_hf_state_dict(hf: dict[str, np.ndarray], config: Any, target: set[str]) -> dict[str, np.ndarray]:
    """Checkpoint tensors -> Paddle parameters: rename (`paddle_name`) and transpose Linear weights to [in, out].

    SigLIP's pooling head (`visual.vision_model.head.*`) is not loaded: neither paddleformers' nor transformers'
    model has it. Full saves carry it unchanged from the base (`paddlemix.models.carried`); merges copy it.
    A folder saved by transformers 5.x has no `packing_position_embedding` (its model has none); the table, which
    no forward pass reads, is then zeros, so exports still carry it for vLLM, which refuses checkpoints without it.
    """
    out = {}
    for name, value in hf.items():
        name = paddle_name(name)
        if name.startswith(UNUSED):
            logger.debug("%s is not a parameter of the model (SigLIP's pooling head); not loaded", name)
            continue
        out[name] = np.ascontiguousarray(value.T) if _is_linear(name, value) else value
    if "lm_head.weight" in target and "lm_head.weight" not in out and EMBEDDINGS in out:  # tied head
        out["lm_head.weight"] = out[EMBEDDINGS]
    if PATCH_EMBEDDING in out and PACKING_TABLE in target and PACKING_TABLE not in out:
        rows, width = PACKING_POSITIONS, out[PATCH_EMBEDDING].shape[0]
        logger.warning("the checkpoint has no %s (transformers 5.x leaves it out); it is set to zeros [%d, %d], "
                       "which the model never reads, so exports carry it for vLLM", PACKING_TABLE, rows, width)  # fmt: skip
        out[PACKING_TABLE] = np.zeros((rows, width), dtype=out[PATCH_EMBEDDING].dtype)
    return out


def to_hf_state_dict(state: dict[str, np.ndarray], config: Any) -> dict[str, np.ndarray]:
    """Paddle parameters -> checkpoint tensors in the original layout (every tensor, `packing_position_embedding`
    included); a head tied to the embeddings is left out, as transformers saves it."""
    tied = getattr(config, "tie_word_embeddings", False)
    return {
        name: np.ascontiguousarray(value.T) if _is_linear(name, value) else value
        for name, value in state.items()
        if not (tied and name == "lm_head.weight")
    }


def image_grid(image_processor: Any, width: int, height: int) -> tuple[int, int, int]:
    """The (t, h, w) patch grid the image processor makes of a width x height image, by its own resize rule
    (sides multiples of patch x merge = 28 px, pixels within min_pixels..max_pixels)."""
    _, (h, w) = image_processor.get_smarted_resize(height, width)
    return 1, h, w


ADAPTER = ModelAdapter(
    model_type="paddleocr_vl",
    config_class=f"{_MODEL}:PaddleOCRVLConfigMIX",
    model_class=f"{_MODEL}:PaddleOCRVLForConditionalGenerationMIX",
    processor_class="paddlemix.models.paddleocr_vl.processor:PaddleOCRVLProcessorMIX",
    vision_placeholder="<|IMAGE_START|><|IMAGE_PLACEHOLDER|><|IMAGE_END|>",
    image_token="<|IMAGE_PLACEHOLDER|>",
    lora_targets=LM_LORA_TARGETS,
    module_groups={
        "vision": ("visual.*",),
        "projector": ("mlp_AR.*",),
        "llm": ("model.*", "lm_head.*"),
    },
    prepare_config=prepare_config,
    export_state_dict=to_hf_state_dict,
    import_state_dict=from_hf_state_dict,
    image_grid=image_grid,
    positions=positions,
    parameter_name=paddle_name,
    peft_name=hf5_name,
    tensor_parallel_parts={},
    unused_tensors=UNUSED,
)
