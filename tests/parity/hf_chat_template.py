"""What transformers 4.57 makes of a folder's chat template: the processor's and the tokenizer's rendering, and
the text of the tokens `return_assistant_tokens_mask` marks (from `{% generation %}` blocks).

Runs in the reference environment:  python hf_chat_template.py REQUEST.json OUT.json
REQUEST.json: [{"folder", "messages" (HF chat messages), "add_generation_prompt", "mask" (bool), "ids" (bool)?}, ...]
OUT.json: [{"processor": str, "tokenizer": str, "assistant_text": str | null, "ids": [int] | null}, ...]
"ids": the processor's `apply_chat_template(..., tokenize=True)` input ids (text only), BOS handling included; for
string messages (templates that show strings), the tokenizer's rendering encoded by the processor as that method does.
"""

from __future__ import annotations

import functools
import json
import sys

import transformers
from hf_reference import load_processor


@functools.cache
def readers(folder: str):
    return load_processor(folder), transformers.AutoTokenizer.from_pretrained(folder)


def render(case: dict) -> dict:
    processor, tokenizer = readers(case["folder"])
    options = {"add_generation_prompt": case["add_generation_prompt"]}
    out = {
        "processor": processor.apply_chat_template(case["messages"], tokenize=False, **options),
        "tokenizer": tokenizer.apply_chat_template(case["messages"], tokenize=False, **options),
        "assistant_text": None,
        "ids": None,
    }
    if case.get("ids") and not isinstance(case["messages"][0]["content"], str):
        encoded = processor.apply_chat_template(case["messages"], tokenize=True, return_dict=True, **options)
        out["ids"] = [int(i) for i in encoded["input_ids"][0]]
    elif case.get("ids"):  # processors take typed messages only: render with the tokenizer, encode as they do
        text = out["tokenizer"]
        bos = tokenizer.bos_token
        encoded = processor(text=[text], add_special_tokens=not (bos and text.startswith(bos)))
        out["ids"] = [int(i) for i in encoded["input_ids"][0]]
    if case["mask"]:
        encoded = tokenizer.apply_chat_template(
            case["messages"], tokenize=True, return_dict=True, return_assistant_tokens_mask=True
        )
        ids = [i for i, keep in zip(encoded["input_ids"], encoded["assistant_masks"]) if keep]
        out["assistant_text"] = tokenizer.decode(ids)
    return out


def main() -> None:
    request_path, out_path = sys.argv[1:3]
    with open(request_path, encoding="utf-8") as f:
        cases = json.load(f)
    with open(out_path, "w", encoding="utf-8") as f:
        json.dump([render(case) for case in cases], f)


if __name__ == "__main__":
    main()
