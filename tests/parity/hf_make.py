"""Save a tiny model folder with the installed transformers (4.57 or 5.x), so the folder has that version's own
config.json keys, checkpoint names, processor and tokenizer files.

Runs in a reference environment, not the Paddle one:
  python hf_make.py SRC_DIR OUT_DIR [SEED]
SRC_DIR is one of our tiny folders (paddlemix.testing); its config and processor are read by transformers, a model
is built from the config with every tensor random (norm scales 1 + N(0, 0.1), every other tensor N(0, 0.1), biases
included: transformers' own init leaves zero biases and unit norms, which would hide layout mistakes), and model and
processor are written by `save_pretrained`. Prints {"transformers": version} as JSON.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import transformers
from hf_reference import load_processor, model_class, video_settings


def randomise(model: torch.nn.Module, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = 0.1 * torch.randn(param.shape, generator=generator)
            param.copy_(noise + (1.0 if "norm" in name and name.endswith("weight") else 0.0))


def main() -> None:
    src, out, *rest = sys.argv[1:]
    config = transformers.AutoConfig.from_pretrained(src)
    model = model_class(src)(config).eval()
    randomise(model, int(rest[0]) if rest else 0)
    model.save_pretrained(out, safe_serialization=True)
    load_processor(src).save_pretrained(out)
    if transformers.__version__.startswith("4."):  # 4.x writes the video settings in a file of their own
        settings = video_settings(src)
        (Path(out) / "video_preprocessor_config.json").write_text(json.dumps(settings, indent=2), encoding="utf-8")
    print(json.dumps({"transformers": transformers.__version__}))


if __name__ == "__main__":
    main()
