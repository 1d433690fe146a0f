"""Reference outputs from Hugging Face transformers 4.57 or 5.x (PyTorch, CPU) for the parity tests.

The model class comes from the folder's config.json `model_type` (HF_CLASSES).

Runs in the reference environment, not the Paddle one:
  python hf_reference.py MODEL_DIR REQUEST.json OUT.npz
REQUEST.json: {"messages": [HF chat messages], "images": [paths]} to run the processor and the model, or
{"inputs": "inputs.npz"} to run the model on given input_ids / attention_mask / pixel_values / image_grid_thw;
either may add "max_new_tokens": N for a greedy continuation as well.
Writes the model inputs, the rendered text, the float32 logits and, if asked, the generated ids ("generated").
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import numpy as np
import torch
import transformers
from PIL import Image
from transformers import processing_utils
from transformers.utils import PushToHubMixin
from transformers.video_processing_utils import BaseVideoProcessor

# config.json model_type -> the transformers class that loads such a folder.
HF_CLASSES = {
    "llava": "LlavaForConditionalGeneration",
    "qwen2_vl": "Qwen2VLForConditionalGeneration",
    "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration",
    "qwen3_vl": "Qwen3VLForConditionalGeneration",
    "paddleocr_vl": "PaddleOCRVLForConditionalGeneration",
}


class NoVideoProcessor(BaseVideoProcessor):
    """Qwen-VL processors always build a video processor, which needs torchvision; images do not."""

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        return cls()


class SavedVideoSettings(PushToHubMixin):
    """transformers 5.x's stand-in for the video processor: keeps the folder's video settings (nested in
    processor_config.json or in video_preprocessor_config.json) and writes them back unchanged."""

    _auto_class = None

    def __init__(self, settings: dict) -> None:
        self.settings = settings

    def to_dict(self) -> dict:
        return dict(self.settings)

    @classmethod
    def from_pretrained(cls, folder, processor_config=None, return_unused_kwargs=False, **kwargs):
        settings = processor_config if isinstance(processor_config, dict) and processor_config else None
        settings = settings or video_settings(folder)
        return (cls(settings), kwargs) if return_unused_kwargs else cls(settings)


def video_settings(folder) -> dict:
    """A folder's video processor settings: video_preprocessor_config.json, else the image processor's settings
    under the video processor's type (how transformers fills in a folder saved without video settings)."""
    path = Path(folder) / "video_preprocessor_config.json"
    if path.is_file():
        return json.loads(path.read_text(encoding="utf-8"))
    settings = json.loads((Path(folder) / "preprocessor_config.json").read_text(encoding="utf-8"))
    kind = settings.pop("image_processor_type", "").replace("ImageProcessor", "VideoProcessor")
    return {**settings, "video_processor_type": kind}


def load_processor(model_dir: str):
    if transformers.__version__.startswith("4."):
        for name in ("AutoVideoProcessor", "BaseVideoProcessor"):
            setattr(processing_utils.transformers_module, name, NoVideoProcessor)
        return transformers.AutoProcessor.from_pretrained(model_dir)
    auto = importlib.import_module("transformers.models.auto.video_processing_auto")
    auto.AutoVideoProcessor = processing_utils.transformers_module.AutoVideoProcessor = SavedVideoSettings
    check = processing_utils.ProcessorMixin.check_argument_for_proper_class
    processing_utils.ProcessorMixin.check_argument_for_proper_class = lambda self, name, arg: (
        None if name == "video_processor" else check(self, name, arg)
    )
    return transformers.AutoProcessor.from_pretrained(model_dir)


def model_class(model_dir: str):
    with open(f"{model_dir}/config.json", encoding="utf-8") as file:
        return getattr(transformers, HF_CLASSES[json.load(file)["model_type"]])


def with_mm_token_types(model, inputs: dict) -> dict:
    """transformers 5.x's Qwen-VL models compute image mRoPE positions only when `mm_token_type_ids` (returned by
    its processors: 1 on image tokens, 2 on video tokens) is passed, and plain positions otherwise; inputs made
    elsewhere get it here. 4.x models and LLaVA take no such input."""
    config = model.config
    if transformers.__version__.startswith("4.") or "mm_token_type_ids" in inputs or "input_ids" not in inputs:
        return inputs
    if getattr(config, "vision_start_token_id", None) is None:
        return inputs
    ids = inputs["input_ids"]
    types = (ids == config.image_token_id).long() + 2 * (ids == config.video_token_id).long()
    return {**inputs, "mm_token_type_ids": types}


def main() -> None:
    model_dir, request_path, out_path = sys.argv[1:4]
    request = json.loads(open(request_path, encoding="utf-8").read())
    model, info = model_class(model_dir).from_pretrained(
        model_dir, torch_dtype=torch.float32, output_loading_info=True
    )
    assert not any(info.values()), f"weights did not load cleanly: {info}"
    model.eval()
    text = ""
    if request.get("inputs"):
        inputs = {k: torch.from_numpy(v) for k, v in np.load(request["inputs"]).items()}
    else:
        processor = load_processor(model_dir)
        text = processor.apply_chat_template(request["messages"], tokenize=False, add_generation_prompt=False)
        images = [Image.open(p).convert("RGB") for p in request["images"]] or None
        inputs = processor(text=[text], images=images, return_tensors="pt")
    extra = {}
    inputs = with_mm_token_types(model, inputs)
    with torch.no_grad():
        logits = model(**inputs).logits.float().numpy()
        if request.get("max_new_tokens"):
            ids = model.generate(**inputs, max_new_tokens=request["max_new_tokens"], do_sample=False)
            extra["generated"] = ids[:, inputs["input_ids"].shape[1] :].numpy()
    np.savez(out_path, text=np.array(text), logits=logits, **extra, **{k: v.numpy() for k, v in inputs.items()})


if __name__ == "__main__":
    main()
