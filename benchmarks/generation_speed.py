"""Generated tokens per second with the KV cache versus re-running the prompt (and the vision tower) per token.

`measure(model_dir, new_tokens)` answers one image question greedily twice, exactly `new_tokens` tokens each time
(eos ignored): once with the cache (prompt and image once, then one token per step) and once recomputing the whole
sequence every step (what paddleformers' `generate` does for Qwen-VL, see paddlemix/inference/decoding.py). Without
--model_dir it builds the three tiny families and a mid-size Qwen2.5-VL (the tiny builder, wider and deeper, and a
processor allowing 448 x 448 images = 256 visual tokens) under a temporary folder.
Usage: python benchmarks/generation_speed.py [--model_dir DIR ...] [--new_tokens 32]
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
from pathlib import Path
from typing import Any

from PIL import Image

from paddlemix.testing.tiny_llava import build_tiny_causal_lm, build_tiny_clip_vision
from paddlemix.testing.tiny_model import build_tiny_qwen2_5_vl
from paddlemix.testing.tiny_qwen3_vl import build_tiny_qwen3_vl

# About 165M parameters in float32 (0.66 GB): 12 layers of width 1024 and an 8-block vision tower of width 512.
MID_SIZE = {"hidden_size": 1024, "num_layers": 12, "num_heads": 16, "num_kv_heads": 4, "intermediate_size": 2816,
            "vision_hidden": 512, "vision_depth": 8, "vision_heads": 8}  # fmt: skip
MID_IMAGE_PIXELS = 448 * 448


def _run(generator: Any, prompt: dict, new_tokens: int, use_cache: bool) -> Any:
    settings = generator.settings.with_overrides(max_new_tokens=new_tokens, do_sample=False, eos_token_ids=())
    return generator.generate_encoded([prompt], settings, use_cache=use_cache).generated


def measure(
    model_dir: str | Path, new_tokens: int = 32, image_size: tuple[int, int] = (448, 448), device: str = "cpu"
) -> dict[str, float]:
    """Tokens/s of greedy decoding with and without the KV cache for one image question on `model_dir`.

    Returns prompt_tokens, new_tokens, cached/recompute seconds, prompt-pass seconds and tokens/s, their ratio
    (`speedup`) and the process's peak resident memory in MB (ru_maxrss, whole process so far).
    """
    from paddlemix.inference.generation import Generator, question_message

    generator = Generator.from_pretrained(model_dir, device=device)
    with tempfile.TemporaryDirectory() as tmp:
        image = str(Path(tmp) / "image.png")
        Image.new("RGB", image_size, (200, 40, 40)).save(image)
        prompt = generator.encode([question_message("What color is the picture? Describe it.", [image])], [image])
    _run(generator, prompt, 2, use_cache=True)  # warm-up: first-call allocations and kernel choices
    cached = _run(generator, prompt, new_tokens, use_cache=True)
    recompute = _run(generator, prompt, new_tokens, use_cache=False)
    assert cached.tokens == recompute.tokens, "cached and recomputed greedy decoding disagree"
    result = {
        "prompt_tokens": len(prompt["input_ids"]),
        "new_tokens": cached.new_tokens,
        "cached_seconds": cached.seconds,
        "cached_prompt_seconds": cached.prefill_seconds,
        "cached_tokens_per_second": cached.new_tokens / cached.seconds,
        "recompute_seconds": recompute.seconds,
        "recompute_tokens_per_second": recompute.new_tokens / recompute.seconds,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    result["speedup"] = result["cached_tokens_per_second"] / result["recompute_tokens_per_second"]
    return result


def build_models(work: Path) -> dict[str, Path]:
    """The tiny Qwen2.5-VL, Qwen3-VL and LLaVA (CLIP + Qwen2) folders and the mid-size Qwen2.5-VL."""
    from paddlemix.models.llava.build import build_llava

    models = {
        "tiny qwen2_5_vl": build_tiny_qwen2_5_vl(work / "qwen2_5_vl"),
        "tiny qwen3_vl": build_tiny_qwen3_vl(work / "qwen3_vl"),
        "tiny llava": build_llava(
            build_tiny_clip_vision(work / "clip"), build_tiny_causal_lm(work / "lm", "qwen2"), work / "llava"
        ),  # fmt: skip
    }
    mid = build_tiny_qwen2_5_vl(work / "mid_qwen2_5_vl", **MID_SIZE)
    config_file = mid / "preprocessor_config.json"
    config = json.loads(config_file.read_text())
    config.update(max_pixels=MID_IMAGE_PIXELS, size={"shortest_edge": config["min_pixels"],
                                                     "longest_edge": MID_IMAGE_PIXELS})  # fmt: skip
    config_file.write_text(json.dumps(config, indent=2))
    models["mid-size qwen2_5_vl"] = mid
    return models


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_dir", nargs="+", help="model folders (default: build tiny and mid-size models)")
    parser.add_argument("--new_tokens", type=int, default=32)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="generation-speed-"))
    models = {str(p): Path(p) for p in args.model_dir} if args.model_dir else build_models(work)
    print(f"{'model':<22} {'prompt':>6} {'new':>4} {'cached tok/s':>12} {'recompute tok/s':>15} {'speedup':>7} "
          f"{'prompt pass s':>13} {'peak MB':>8}")  # fmt: skip
    for name, folder in models.items():
        r = measure(folder, args.new_tokens)
        print(f"{name:<22} {r['prompt_tokens']:>6} {r['new_tokens']:>4} {r['cached_tokens_per_second']:>12.3g} "
              f"{r['recompute_tokens_per_second']:>15.3g} {r['speedup']:>6.1f}x {r['cached_prompt_seconds']:>13.2f} "
              f"{r['peak_rss_mb']:>8.0f}", flush=True)  # fmt: skip
        print(json.dumps({"model": name, **r}), file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
