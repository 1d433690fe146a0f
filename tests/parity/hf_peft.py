"""Hugging Face PEFT side of the adapter round trip (runs in a reference environment: torch, transformers 4.57.1 or
5.x, and a PEFT release that works with it).

  python hf_peft.py load MODEL_DIR ADAPTER_DIR INPUTS.npz OUT.npz
      PeftModel.from_pretrained on the transformers model; OUT.npz gets the logits and the adapter keys PEFT
      expects but the file lacks (missing) and the file holds but PEFT does not use (unexpected).
  python hf_peft.py make MODEL_DIR ADAPTER_DIR INPUTS.npz OUT.npz '{"target_modules": [...], ...}'
      A LoraConfig from the JSON (r, lora_alpha, target_modules, modules_to_save, ...) with random non-zero A and B
      (init_lora_weights=False) and randomised modules_to_save, saved by `save_pretrained`; OUT.npz gets its logits.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import torch
from hf_reference import model_class, with_mm_token_types
from peft import LoraConfig, PeftModel, get_peft_model
from peft.utils import get_peft_model_state_dict
from safetensors.torch import load_file


def base_model(model_dir: str):
    model, info = model_class(model_dir).from_pretrained(
        model_dir, torch_dtype=torch.float32, output_loading_info=True
    )
    assert not any(info.values()), f"weights did not load cleanly: {info}"
    return model.eval()


def logits(model, inputs_path: str) -> np.ndarray:
    inputs = with_mm_token_types(model, {k: torch.from_numpy(v) for k, v in np.load(inputs_path).items()})
    with torch.no_grad():
        return model(**inputs).logits.float().numpy()


def as_peft_reads(model, state: dict) -> dict:
    """The adapter's tensors under the names PEFT loads them by: on transformers 5.x PEFT renames a file's keys by
    the model's weight conversions first (e.g. LLaVA's `vision_tower.vision_model.*` -> `vision_tower.*`)."""
    try:
        from peft.utils.transformers_weight_conversion import convert_peft_adapter_state_dict_for_transformers
    except ImportError:  # transformers 4.x: no conversions
        return state
    config = model.peft_config["default"]
    return convert_peft_adapter_state_dict_for_transformers(model=model, peft_config=config, adapter_state_dict=state)


def load(model_dir: str, adapter_dir: str, inputs_path: str, out_path: str) -> None:
    model = PeftModel.from_pretrained(base_model(model_dir), adapter_dir).eval()
    expected = set(get_peft_model_state_dict(model))
    in_file = set(as_peft_reads(model, load_file(f"{adapter_dir}/adapter_model.safetensors")))
    np.savez(
        out_path,
        logits=logits(model, inputs_path),
        missing=np.array(sorted(expected - in_file), dtype=str),
        unexpected=np.array(sorted(in_file - expected), dtype=str),
        adapted=np.array(sorted(n for n, _ in model.named_modules() if n.endswith("lora_A")), dtype=str),
    )


def make(model_dir: str, adapter_dir: str, inputs_path: str, out_path: str, spec: str) -> None:
    torch.manual_seed(0)
    config = LoraConfig(init_lora_weights=False, **json.loads(spec))
    model = get_peft_model(base_model(model_dir), config).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if ".modules_to_save." in name:
                param.add_(0.05 * torch.randn_like(param))
    model.save_pretrained(adapter_dir)
    np.savez(out_path, logits=logits(model, inputs_path))


if __name__ == "__main__":
    {"load": load, "make": make}[sys.argv[1]](*sys.argv[2:])
