"""Per-token time of this toolkit's LoRA training step against plain transformers 4.57.1 + PEFT (PyTorch), same
weights, adapter, batches and optimizer settings, one thread each; plus the 8 x (Linear + SiLU) + AdamW
micro-benchmark in both frameworks (the frameworks' own share of the gap).

Usage: python benchmarks/vs_torch.py [--sizes tiny cut] [--rounds 5] [--ref_python PATH] [--workdir DIR]

Sizes and step: see benchmarks/step_bench.py. The PyTorch side runs benchmarks/torch_step.py in the reference
environment (--ref_python, default $PADDLEMIX_REF_PYTHON). The two sides alternate (Paddle round, PyTorch round,
...) over the same cyclic sequence of batches, because other work on the machine changes wall-clock speed; each
round's seconds per real token are compared with the neighbouring round of the other side, and the medians of
these ratios are printed (ratio > 1: this toolkit is slower). The first-step losses of both sides are printed too:
they agree to float tolerance when both sides train the same step.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import step_bench

step_bench.one_thread()

import numpy as np  # noqa: E402

# Steps per round and warm-up steps per size: a round is a few seconds at least.
ROUND_STEPS = {"tiny": 8, "cut": 1}
WARMUP = {"tiny": 3, "cut": 1}


class TorchWorker:
    """benchmarks/torch_step.py in the reference environment, answering one JSON command per line."""

    def __init__(self, python: str, folder: Path, adapter: Path, batches: Path):
        script = Path(__file__).with_name("torch_step.py")
        self.proc = subprocess.Popen([python, str(script), str(folder), str(adapter), str(batches)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)  # fmt: skip
        self.read()

    def ask(self, **command: int) -> dict:
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()
        return self.read()

    def read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the PyTorch worker stopped (exit code {self.proc.wait()})")
        return json.loads(line)

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()


def compare(size: str, workdir: Path, ref_python: str, rounds: int) -> dict[str, float]:
    """Interleaved rounds of both sides at `size`; returns medians and the ratio."""
    from paddlemix.peft.lora import save_adapter

    folder = step_bench.build_folder(size, workdir / size / "model")
    steps = step_bench.make_packs(folder, size)
    paddle_side = step_bench.paddle_step(folder)
    adapter, batches = workdir / size / "adapter", workdir / size / "batches.npz"
    save_adapter(paddle_side.model, adapter, str(folder))
    step_bench.save_batches(steps, paddle_side.pad_token_id, batches)
    torch_side = TorchWorker(ref_python, folder, adapter, batches)
    tokens = [step_bench.count_tokens(s) for s in steps]
    position = 0

    def paddle_round(n: int) -> tuple[list[float], list[float], int]:
        nonlocal position
        seconds, losses, count = [], [], 0
        for _ in range(n):
            start = time.perf_counter()
            losses.append(paddle_side.run(steps[position % len(steps)]))
            seconds.append(time.perf_counter() - start)
            count += tokens[position % len(steps)]
            position += 1
        return seconds, losses, count

    _, paddle_losses, _ = paddle_round(WARMUP[size])
    torch_losses = torch_side.ask(steps=WARMUP[size])["losses"]
    per_token = {"paddle": [], "torch": []}
    for _ in range(rounds):
        seconds, _, count = paddle_round(ROUND_STEPS[size])
        per_token["paddle"].append(sum(seconds) / count)
        answer = torch_side.ask(steps=ROUND_STEPS[size])
        per_token["torch"].append(sum(answer["seconds"]) / count)  # same batches, same token count
    torch_side.close()
    ratios = [p / t for p, t in zip(per_token["paddle"], per_token["torch"])]
    return {
        "paddle_us_per_token": 1e6 * float(np.median(per_token["paddle"])),
        "torch_us_per_token": 1e6 * float(np.median(per_token["torch"])),
        "ratio": float(np.median(ratios)),
        "ratio_min": min(ratios),
        "ratio_max": max(ratios),
        "first_loss_paddle": paddle_losses[0],
        "first_loss_torch": torch_losses[0],
        "tokens_per_step": float(np.mean(tokens)),
    }


def micro(ref_python: str, rounds: int) -> dict[str, float]:
    """The micro-benchmark, alternating frameworks; medians of the per-step medians (milliseconds)."""
    folder = Path(tempfile.mkdtemp(prefix="vs-torch-micro-"))
    script = Path(__file__).with_name("torch_step.py")
    code = (f"import sys; sys.path.insert(0, {str(script.parent)!r}); import torch_step; "
            "print(torch_step.micro_benchmark(50))")  # fmt: skip
    paddle_ms, torch_ms = [], []
    for _ in range(rounds):
        paddle_ms.append(1e3 * step_bench.micro_benchmark_paddle(50))
        out = subprocess.run([ref_python, "-c", code], capture_output=True, text=True, check=True, cwd=folder)
        torch_ms.append(1e3 * float(out.stdout.strip().splitlines()[-1]))
    return {"paddle_ms": float(np.median(paddle_ms)), "torch_ms": float(np.median(torch_ms)),
            "ratio": float(np.median([p / t for p, t in zip(paddle_ms, torch_ms)]))}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["tiny", "cut"], choices=sorted(step_bench.SIZES))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--ref_python", default=os.environ.get("PADDLEMIX_REF_PYTHON"))
    parser.add_argument("--workdir", type=Path, default=None, help="keep model folders and batches here")
    parser.add_argument("--no_micro", action="store_true")
    args = parser.parse_args()
    if not args.ref_python:
        sys.exit("set --ref_python or PADDLEMIX_REF_PYTHON to a Python with torch + transformers 4.57.1 + peft "
                 "(scripts/run_tests.sh builds one as .venv-ref)")  # fmt: skip
    if os.sep in args.ref_python:  # a relative path names a file under the working directory, not the workers' folders
        args.ref_python = str(Path(args.ref_python).absolute())
    if not os.access(args.ref_python, os.X_OK) and not shutil.which(args.ref_python):
        sys.exit(f"--ref_python / PADDLEMIX_REF_PYTHON: {args.ref_python} is not an executable Python; "
                 "scripts/run_tests.sh builds the reference environment as .venv-ref")  # fmt: skip
    import paddle

    from paddlemix.utils.device import device_env

    device_env("cpu")
    paddle.set_device("cpu")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="vs-torch-"))
    if not args.no_micro:
        m = micro(args.ref_python, args.rounds)
        print(f"micro 8x(Linear+SiLU)+AdamW: paddle {m['paddle_ms']:.1f} ms  torch {m['torch_ms']:.1f} ms  "
              f"ratio {m['ratio']:.2f}x", flush=True)  # fmt: skip
    for size in args.sizes:
        r = compare(size, workdir, args.ref_python, args.rounds)
        print(f"{size}: {r['tokens_per_step']:.0f} tokens/step  paddle {r['paddle_us_per_token']:.1f} us/token  "
              f"torch {r['torch_us_per_token']:.1f} us/token  ratio {r['ratio']:.2f}x "
              f"(rounds {r['ratio_min']:.2f}-{r['ratio_max']:.2f})  first loss paddle {r['first_loss_paddle']:.6f} "
              f"torch {r['first_loss_torch']:.6f}", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
