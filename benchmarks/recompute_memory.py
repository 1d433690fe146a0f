"""Peak memory of one LoRA training step (forward + backward) with and without activation recompute, on CPU.

Each measurement runs in its own process: load the model (float32), wrap it with LoRA on the family's default
targets, optionally turn recompute on (`paddlemix.trainer.recompute`), then one step on `seq_len` random text
tokens. Peak RSS is the process's high-water mark; "step" is its growth over the RSS after loading, i.e. the
activations and gradients of the step.

Usage: python benchmarks/recompute_memory.py --model_dir DIR [--seq_len 2048]
From Python: lora_step_peak(model_dir, recompute=True, seq_len=2048) -> peak RSS in MiB.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def _child(model_dir: str, recompute: bool, seq_len: int) -> dict[str, Any]:
    import numpy as np
    import paddle
    from paddle.distributed import fleet

    from paddlemix.models import adapter_for
    from paddlemix.peft.lora import apply_lora, lora_modules
    from paddlemix.trainer.recompute import SUPPORTED, apply_recompute

    paddle.set_device("cpu")
    fleet.init(is_collective=True)
    paddle.seed(0)
    adapter = adapter_for(model_dir)
    model = apply_lora(adapter.load_model(model_dir), lora_modules(model_dir, adapter, None), rank=8, alpha=16)
    configs = apply_recompute(model, SUPPORTED if recompute else None)
    vocab = int(getattr(model.config, "vocab_size", None) or model.config.text_config.vocab_size)
    ids = paddle.to_tensor(np.random.default_rng(0).integers(0, vocab, (1, seq_len)))
    model.train()
    loaded = _rss_mb()
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"peak_mb": peak, "step_mb": peak - loaded, "loss": float(loss), "configs": configs}


def lora_step_measure(model_dir: str | Path, recompute: bool, seq_len: int = 2048) -> dict[str, Any]:
    """Run one LoRA step in a fresh process and return {peak_mb, step_mb, loss, configs} (MiB; `configs` is the
    number of model configs recompute was set on, 0 when off)."""
    cmd = [sys.executable, __file__, "--child", str(model_dir), str(int(recompute)), str(seq_len)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"the measuring process failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def lora_step_peak(model_dir: str | Path, recompute: bool, seq_len: int = 2048) -> float:
    """Peak RSS in MiB of a process that loads `model_dir` and runs one LoRA step on `seq_len` tokens."""
    return lora_step_measure(model_dir, recompute, seq_len)["peak_mb"]


def main() -> None:
    if sys.argv[1:2] == ["--child"]:
        model_dir, recompute, seq_len = sys.argv[2:5]
        print(json.dumps(_child(model_dir, recompute == "1", int(seq_len))))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_dir", required=True)
    parser.add_argument("--seq_len", type=int, default=2048)
    args = parser.parse_args()
    off = lora_step_measure(args.model_dir, False, args.seq_len)
    on = lora_step_measure(args.model_dir, True, args.seq_len)
    print(f"LoRA step on {args.seq_len} tokens, {args.model_dir}")
    print(f"{'recompute':<10} {'peak RSS MiB':>13} {'step MiB':>10} {'loss':>10}")
    for name, r in (("off", off), ("on", on)):
        print(f"{name:<10} {r['peak_mb']:>13.0f} {r['step_mb']:>10.0f} {r['loss']:>10.5f}")
    print(f"step memory with recompute: {on['step_mb'] / max(off['step_mb'], 1e-9):.2f}x of without")


if __name__ == "__main__":
    main()
