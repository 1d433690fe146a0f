"""Hugging Face side of the DPO parity test (runs in the reference environment: torch, transformers 4.57.1, peft).

  python hf_dpo.py MODEL_DIR ADAPTER_DIR SIDES.npz BETA OUT.json
SIDES.npz holds, for side k (pair k // 2; even k chosen, odd k rejected), `input_ids_k` [L], `labels_k` [L]
(already shifted: the target of position t, -100 = not scored) and, with images, `pixel_values_k` and
`image_grid_thw_k`. The policy is PeftModel(base, adapter); the reference is the same model under
`disable_adapter()`. The loss is DPO's (Rafailov et al. 2023, eq. 7) written out here, averaged over the pairs;
OUT.json gets the loss, the mean rewards / margins / accuracy and the summed log-probs of each side.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import torch
from hf_reference import model_class
from peft import PeftModel


def side_logps(model, sides: dict, k: int) -> float:
    inputs = {"input_ids": torch.from_numpy(sides[f"input_ids_{k}"][None])}
    if f"pixel_values_{k}" in sides:
        inputs["pixel_values"] = torch.from_numpy(sides[f"pixel_values_{k}"])
        inputs["image_grid_thw"] = torch.from_numpy(sides[f"image_grid_thw_{k}"])
    with torch.no_grad():
        logp = torch.log_softmax(model(**inputs).logits[0].double(), dim=-1).numpy()
    labels = sides[f"labels_{k}"]
    scored = np.flatnonzero(labels != -100)
    return float(logp[scored, labels[scored]].sum())


def main() -> None:
    model_dir, adapter_dir, sides_path, beta, out_path = sys.argv[1:6]
    beta = float(beta)
    base = model_class(model_dir).from_pretrained(model_dir, torch_dtype=torch.float32)
    model = PeftModel.from_pretrained(base, adapter_dir).eval()
    sides = dict(np.load(sides_path))
    n = len([k for k in sides if k.startswith("input_ids_")])
    policy = np.array([side_logps(model, sides, k) for k in range(n)])
    with model.disable_adapter():
        reference = np.array([side_logps(model, sides, k) for k in range(n)])
    r_c, r_r = beta * (policy[0::2] - reference[0::2]), beta * (policy[1::2] - reference[1::2])
    losses = -np.log(1 / (1 + np.exp(-(r_c - r_r))))
    out = {"loss": losses.mean(), "rewards/chosen": r_c.mean(), "rewards/rejected": r_r.mean(),
           "rewards/margins": (r_c - r_r).mean(), "rewards/accuracies": (r_c > r_r).mean(),
           "logps/chosen": policy[0::2].mean(), "logps/rejected": policy[1::2].mean(),
           "policy": policy.tolist(), "reference": reference.tolist()}  # fmt: skip
    with open(out_path, "w", encoding="utf-8") as file:
        json.dump({k: v if isinstance(v, list) else float(v) for k, v in out.items()}, file)


if __name__ == "__main__":
    main()
