"""Reference outputs of transformers 4.57.1 (PyTorch, CPU) for a video + text conversation, for test_video_parity.py.

Runs in the reference environment:
  python hf_video.py MODEL_DIR REQUEST.json OUT.npz
REQUEST.json: {"frames": "frames.npz" (uint8 [T, H, W, 3], sampled and resized as qwen-vl-utils gives them),
"indices": [...], "fps": native frame rate, "sample_fps": sampled frames per second, "question", "answer",
"linspace": [[first, last, n], ...], "image": path (optional: an image before the video)}.

The model's processor expands the video tokens (Qwen3-VL: with its `<t seconds>` text from the frame indices and
frame rate, as `video_metadata` carries them) and builds `second_per_grid_ts` (Qwen2.5-VL: from `fps`). Its video
processor needs torchvision, which the reference environment lacks (the registry's torchvision for torch 2.13 is a
CUDA build that does not import with the CPU torch); the pixels come from the model's image processor
in its video mode (`videos=`, `do_resize=False`: rescale, normalise, pad to the temporal patch, flatten), the same
arithmetic the video processors do on frames that are already resized. Writes the processor's outputs, the model's
3-D positions (`get_rope_index`), the float32 logits and `torch.linspace(...).round()` for each `linspace` triple.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import torch
from hf_reference import load_processor, model_class
from PIL import Image
from transformers.feature_extraction_utils import BatchFeature
from transformers.video_utils import VideoMetadata


class FramesAsVideo:
    """Stands in for the video processor: pixels by the image processor's video mode, metadata from the request."""

    def __init__(self, image_processor, metadata: VideoMetadata | None):
        self.image_processor = image_processor
        self.merge_size = image_processor.merge_size
        self.temporal_patch_size = image_processor.temporal_patch_size
        self.metadata = metadata

    def __call__(self, videos, **kwargs):
        out = self.image_processor(images=None, videos=videos, do_resize=False, return_tensors="pt")
        return BatchFeature({**out, **({"video_metadata": [self.metadata]} if self.metadata else {})})


def main() -> None:
    model_dir, request_path, out_path = sys.argv[1:4]
    request = json.loads(open(request_path, encoding="utf-8").read())
    frames = np.load(request["frames"])["frames"]  # uint8 [T, H, W, 3]
    processor = load_processor(model_dir)
    metadata = VideoMetadata(total_num_frames=len(frames), fps=request["fps"], frames_indices=request["indices"])
    name = type(processor).__name__.lower()  # Qwen3-VL's processor reads the metadata; the others take none
    processor.video_processor = FramesAsVideo(processor.image_processor, metadata if "qwen3" in name else None)
    image = [{"type": "image"}] if request.get("image") else []
    messages = [
        {"role": "user", "content": [*image, {"type": "video"}, {"type": "text", "text": request["question"]}]},
        {"role": "assistant", "content": [{"type": "text", "text": request["answer"]}]},
    ]
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
    video = [frame for frame in frames.transpose(0, 3, 1, 2)]  # T x [3, H, W]
    kwargs = {"fps": [request["sample_fps"]]} if "qwen2_5" in name else {}
    images = [Image.open(request["image"]).convert("RGB")] if request.get("image") else None
    inputs = processor(text=[text], images=images, videos=[video], return_tensors="pt", **kwargs)
    inputs.pop("video_metadata", None)
    model, info = model_class(model_dir).from_pretrained(model_dir, torch_dtype=torch.float32,
                                                         output_loading_info=True)  # fmt: skip
    assert not any(info.values()), f"weights did not load cleanly: {info}"
    model.eval()
    rope = {"input_ids": inputs["input_ids"], "video_grid_thw": inputs["video_grid_thw"],
            "attention_mask": inputs["attention_mask"]}  # fmt: skip
    if "second_per_grid_ts" in inputs:
        rope["second_per_grid_ts"] = inputs["second_per_grid_ts"]
    if "image_grid_thw" in inputs:
        rope["image_grid_thw"] = inputs["image_grid_thw"]
    with torch.no_grad():
        positions, _ = model.model.get_rope_index(**rope)
        logits = model(**inputs).logits.float().numpy()
    lin = [torch.linspace(a, b, n).round().long().numpy() for a, b, n in request.get("linspace", [])]
    out = {k: v.numpy() if hasattr(v, "numpy") else np.asarray(v) for k, v in inputs.items()}
    np.savez(out_path, text=np.array(text), logits=logits, position_ids=positions.numpy(), **out,
             **{f"linspace_{k}": v for k, v in enumerate(lin)})  # fmt: skip


if __name__ == "__main__":
    main()
