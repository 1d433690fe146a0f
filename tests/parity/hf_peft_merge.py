"""Reference for the LoRA merge: PEFT's own merge (PeftModel.from_pretrained(...).merge_and_unload()) in
transformers 4.57 next to our merged folder loaded by transformers (PyTorch, CPU).

Runs in the reference environment, not the Paddle one:
  python hf_peft_merge.py IMAGE OUT.json BASE_DIR,ADAPTER_DIR,MERGED_DIR,DTYPE [...more cases]
DTYPE is float32 or bfloat16. Writes, per case, {"loading_info" (of MERGED_DIR), "max_weight_diff",
"max_weight_ulps", "max_logits_diff", "changed_tensors" (by PEFT's merge)}.
"""

from __future__ import annotations

import json
import sys

import torch
from hf_reference import load_processor, model_class
from peft import PeftModel
from PIL import Image

MESSAGES = [
    {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What color is the circle?"}]},
    {"role": "assistant", "content": [{"type": "text", "text": "red"}]},
]


def ulps(a: torch.Tensor, b: torch.Tensor, dtype: torch.dtype) -> float:
    """Largest |a - b| in units of the last place of `dtype` at the larger magnitude."""
    big = torch.maximum(a.abs(), b.abs()).float().clamp_min(1e-30)
    ulp = torch.exp2(torch.floor(torch.log2(big))) * torch.finfo(dtype).eps
    return float(((a.float() - b.float()).abs() / ulp).max())


def compare(base_dir: str, adapter_dir: str, merged_dir: str, dtype_name: str, image: str) -> dict:
    dtype = getattr(torch, dtype_name)
    cls = model_class(base_dir)
    ours, info = cls.from_pretrained(merged_dir, torch_dtype=dtype, output_loading_info=True)
    base = cls.from_pretrained(base_dir, torch_dtype=dtype)
    base_state = {k: v.clone() for k, v in base.state_dict().items()}
    peft_merged = PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()
    ours.eval(), peft_merged.eval()
    theirs, mine = peft_merged.state_dict(), ours.state_dict()
    assert set(theirs) == set(mine), sorted(set(theirs) ^ set(mine))[:5]
    processor = load_processor(merged_dir)
    text = processor.apply_chat_template(MESSAGES, tokenize=False)
    inputs = processor(text=[text], images=[Image.open(image).convert("RGB")], return_tensors="pt")
    inputs = {k: v.to(dtype) if v.is_floating_point() else v for k, v in inputs.items()}
    with torch.no_grad():
        logits = [m(**inputs).logits.float() for m in (ours, peft_merged)]
    return {
        "loading_info": {k: sorted(map(str, v)) for k, v in info.items()},
        "max_weight_diff": max(float((mine[k].float() - theirs[k].float()).abs().max()) for k in mine),
        "max_weight_ulps": max(ulps(mine[k], theirs[k], dtype) for k in mine if mine[k].is_floating_point()),
        "max_logits_diff": float((logits[0] - logits[1]).abs().max()),
        "changed_tensors": sorted(k for k in theirs if not torch.equal(theirs[k], base_state[k])),
    }


def main() -> None:
    image, out, *cases = sys.argv[1:]
    results = [compare(*case.split(","), image) for case in cases]
    with open(out, "w", encoding="utf-8") as f:
        json.dump(results, f)


if __name__ == "__main__":
    main()
