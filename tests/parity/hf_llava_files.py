"""How Hugging Face transformers 4.57 (PyTorch, CPU) reads LLaVA-related folders, for the LLaVA file tests.

Runs in the reference environment, not the Paddle one; prints one JSON object:
  python hf_llava_files.py load CLASS DIR                  loading report of transformers.CLASS.from_pretrained(DIR)
  python hf_llava_files.py tokenizer DIR [--slow] TEXT...  AutoTokenizer: class, size, pad/eos tokens and ids of TEXTs
  python hf_llava_files.py processor DIR OUT.npz TEXT IMAGE...   LlavaProcessor(text, images) -> OUT.npz
  python hf_llava_files.py pixels DIR OUT.npz IMAGE...     slow CLIPImageProcessor(images) -> OUT.npz
"""

from __future__ import annotations

import json
import sys

import numpy as np
import transformers
from PIL import Image

IMAGE_TOKEN = "<image>"


def load(cls_name: str, folder: str) -> dict:
    model, info = getattr(transformers, cls_name).from_pretrained(folder, output_loading_info=True)
    state = model.state_dict()
    report = {k: sorted(map(str, v)) for k, v in info.items()}
    return {**report, "parameters": sum(p.numel() for p in model.parameters()), "state_keys": len(state)}


def tokenizer(folder: str, *args: str) -> dict:
    slow = args[:1] == ("--slow",)
    tok = transformers.AutoTokenizer.from_pretrained(folder, use_fast=not slow)
    texts = args[1:] if slow else args
    return {
        "class": type(tok).__name__,
        "len": len(tok),
        "pad_token": tok.pad_token,
        "pad_token_id": tok.pad_token_id,
        "eos_token": tok.eos_token,
        "image_token_id": tok.convert_tokens_to_ids(IMAGE_TOKEN),
        "ids": [tok(t, add_special_tokens=False)["input_ids"] for t in texts],
        "chat_template": tok.chat_template,
    }


def processor(folder: str, out: str, text: str, *images: str) -> dict:
    proc = transformers.LlavaProcessor.from_pretrained(folder)
    pil = [Image.open(p).convert("RGB") for p in images]
    batch = proc(text=[text], images=pil or None, return_tensors="np")
    np.savez(out, **{k: np.asarray(v) for k, v in batch.items()})
    return {"processor": type(proc).__name__, "image_token": proc.image_token, "chat_template": proc.chat_template}


def pixels(folder: str, out: str, *images: str) -> dict:
    proc = transformers.CLIPImageProcessor.from_pretrained(folder)
    batch = proc(images=[Image.open(p) for p in images], return_tensors="np")
    np.savez(out, pixel_values=batch["pixel_values"])
    return {"class": type(proc).__name__}


if __name__ == "__main__":
    command, *rest = sys.argv[1:]
    print(json.dumps({"load": load, "tokenizer": tokenizer, "processor": processor, "pixels": pixels}[command](*rest)))
