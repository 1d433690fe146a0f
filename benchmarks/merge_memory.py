"""Peak memory and time of merge_lora_params.py on a checkpoint with Qwen2.5-VL-7B's language-model shapes (bf16,
sharded as transformers shards it), against the checkpoint's size.

Usage: python benchmarks/merge_memory.py [--layers 2] [--rank 64] [--workdir /tmp/merge-bench]
The checkpoint holds the embedding table, `--layers` decoder layers and the LM head of Qwen2.5-VL-7B (hidden 3584,
intermediate 18944, vocab 152064, 4 KV heads of 128); the adapter is a rank-`--rank` LoRA on every Linear of the layers
(q/k/v/o/gate/up/down, as PEFT names them) plus a fully trained LM head (`modules_to_save`). Peak memory is the
merging process's VmHWM (Linux), printed next to that of the same interpreter after its imports only.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import ml_dtypes
import numpy as np
from safetensors.numpy import save_file

HIDDEN, INTER, VOCAB, KV = 3584, 18944, 152064, 4 * 128
CHILD = """
import sys
import paddlemix.models, paddlemix.peft.merge
from paddlemix.tools.merge_lora_params import main
if sys.argv[1] == "merge":
    main(sys.argv[2:])
status = dict(line.split(":", 1) for line in open("/proc/self/status"))
print("VmHWM_kib", status["VmHWM"].split()[0])
"""


def layer_shapes(i: int) -> dict[str, tuple[int, int]]:
    p = f"model.layers.{i}."
    return {
        p + "self_attn.q_proj.weight": (HIDDEN, HIDDEN), p + "self_attn.k_proj.weight": (KV, HIDDEN),
        p + "self_attn.v_proj.weight": (KV, HIDDEN), p + "self_attn.o_proj.weight": (HIDDEN, HIDDEN),
        p + "mlp.gate_proj.weight": (INTER, HIDDEN), p + "mlp.up_proj.weight": (INTER, HIDDEN),
        p + "mlp.down_proj.weight": (HIDDEN, INTER),
    }  # fmt: skip


def random_bf16(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """N(0, 1) bfloat16 values made 4096 rows at a time (no float32 copy of the whole table)."""
    out = np.empty(shape, dtype=ml_dtypes.bfloat16)
    for start in range(0, shape[0], 4096):
        rows = min(4096, shape[0] - start)
        out[start : start + rows] = rng.standard_normal((rows, shape[1]), dtype=np.float32).astype(ml_dtypes.bfloat16)
    return out


def build(folder: Path, layers: int, rank: int) -> None:
    """One shard per group (embedding, each layer, head), tensors made and written one group at a time."""
    rng = np.random.default_rng(0)
    groups = [{"model.embed_tokens.weight": (VOCAB, HIDDEN)}]
    groups += [layer_shapes(i) for i in range(layers)] + [{"lm_head.weight": (VOCAB, HIDDEN)}]
    weight_map = {}
    for n, group in enumerate(groups):
        file = f"model-{n + 1:05d}-of-{len(groups):05d}.safetensors"
        tensors = {k: random_bf16(rng, s) for k, s in group.items()}
        save_file(tensors, str(folder / file), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(group, file))
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (folder / "config.json").write_text(json.dumps({"model_type": "qwen2_5_vl", "torch_dtype": "bfloat16"}))
    adapter = folder.parent / "adapter"
    adapter.mkdir()
    lora = {}
    for name, (out, inp) in (s for i in range(layers) for s in layer_shapes(i).items()):
        module = "base_model.model." + name.replace("model.layers.", "model.language_model.layers.")[: -len(".weight")]
        lora[module + ".lora_A.weight"] = rng.normal(0, 0.01, (rank, inp)).astype(np.float32)
        lora[module + ".lora_B.weight"] = rng.normal(0, 0.01, (out, rank)).astype(np.float32)
    lora["base_model.model.lm_head.weight"] = random_bf16(rng, (VOCAB, HIDDEN))
    save_file(lora, str(adapter / "adapter_model.safetensors"), metadata={"format": "pt"})
    config = {"peft_type": "LORA", "r": rank, "lora_alpha": 2 * rank, "target_modules": ["q_proj", "k_proj",
              "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"], "modules_to_save": ["lm_head"]}  # fmt: skip
    (adapter / "adapter_config.json").write_text(json.dumps(config))


def peak(*args: str) -> int:
    proc = subprocess.run([sys.executable, "-c", CHILD, *args], capture_output=True, text=True, check=True)
    return int(proc.stdout.split("VmHWM_kib")[-1]) * 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--rank", type=int, default=64)
    parser.add_argument("--workdir", default="/tmp/merge-bench")
    args = parser.parse_args()
    work = Path(args.workdir)
    shutil.rmtree(work, ignore_errors=True)
    (work / "base").mkdir(parents=True)
    try:
        build(work / "base", args.layers, args.rank)
        model = sum(p.stat().st_size for p in (work / "base").glob("*.safetensors"))
        shard = max(p.stat().st_size for p in (work / "base").glob("*.safetensors"))
        adapter = (work / "adapter" / "adapter_model.safetensors").stat().st_size
        interpreter = peak("imports")
        start = time.perf_counter()
        merged = peak("merge", "--lora_path", str(work / "adapter"), "--model_name_or_path", str(work / "base"),
                      "--merge_model_path", str(work / "merged"), "--max_shard_size", "2GB")  # fmt: skip
        seconds = time.perf_counter() - start
    finally:
        shutil.rmtree(work, ignore_errors=True)
    mib = 2**20
    print(f"checkpoint {model / mib:.0f} MiB (largest shard {shard / mib:.0f} MiB), adapter {adapter / mib:.0f} MiB")
    print(f"peak RSS {merged / mib:.0f} MiB = interpreter {interpreter / mib:.0f} MiB + {(merged - interpreter) / mib:.0f} "
          f"MiB ({(merged - interpreter) / model:.2f} x checkpoint, {merged / model:.2f} x in all); {seconds:.1f} s")  # fmt: skip


if __name__ == "__main__":
    main()
