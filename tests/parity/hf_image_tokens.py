"""Image-token counts of transformers 4.57's processor (chat template + processor, as a user calls them) for the
thin-image parity test.

Runs in the reference environment, not the Paddle one:
  python hf_image_tokens.py MODEL_DIR REQUEST.json OUT.json
REQUEST.json: {"images": [paths], "question": str, "typed": bool}: typed content parts for templates that read them
(Qwen-VL), else the question after the processor's image token in string content (a LLaVA built on a text LM). OUT.json: per image {"image_tokens": count of the processor's
image token in input_ids, "grid": image_grid_thw (Qwen-VL) or the pixel_values shape (LLaVA), "length": len(input_ids)}.
"""

from __future__ import annotations

import json
import sys

from hf_reference import load_processor
from PIL import Image


def main() -> None:
    model_dir, request_path, out_path = sys.argv[1:4]
    request = json.loads(open(request_path, encoding="utf-8").read())
    processor = load_processor(model_dir)
    image_token_id = processor.tokenizer.convert_tokens_to_ids(processor.image_token)
    if request["typed"]:
        content = [{"type": "image"}, {"type": "text", "text": request["question"]}]
    else:
        content = processor.image_token + request["question"]
    messages = [{"role": "user", "content": content}]
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    out = []
    for path in request["images"]:
        inputs = processor(text=[text], images=[Image.open(path).convert("RGB")], return_tensors="np")
        ids = inputs["input_ids"][0].tolist()
        grid = inputs["image_grid_thw"][0] if "image_grid_thw" in inputs else inputs["pixel_values"].shape
        out.append({"image_tokens": ids.count(image_token_id), "grid": [int(x) for x in grid], "length": len(ids)})
    with open(out_path, "w", encoding="utf-8") as f:
        json.dump(out, f)


if __name__ == "__main__":
    main()
