"""Where a LoRA training step's time goes: data collation, model forward, the loss (head + cross-entropy, forward
and backward), model backward, optimizer, our callbacks, and the share of the LoRA layers inside forward + backward,
for the tiny demo model and for the compute-bound cut of Qwen2.5-VL-3B (sizes in benchmarks/step_bench.py).

Usage: python benchmarks/step_profile.py [--sizes tiny cut] [--steps 12 2] [--workdir DIR]

One thread. Phases are timed with wall-clock timers around each part of the step (CPU work is synchronous). The
LoRA row is measured apart: each adapted layer, at the input shape it gets in the step, runs forward + backward
with and without its adapter; the difference, summed over the layers, is the adapters' cost (already inside the
forward and backward rows). Callbacks are the trainer's per-step hooks and per-step bookkeeping, timed as if every
step were a logging step (logging_steps 1, the worst case).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import step_bench

step_bench.one_thread()

import numpy as np  # noqa: E402

PHASES = ("collate", "forward", "loss", "backward", "optimizer", "callbacks")


def lora_seconds(model: Any, packs: list[dict[str, np.ndarray]], step: Any, repeats: int = 3) -> float:
    """Seconds the LoRA adapters add to one forward + backward of the step (see the module docstring)."""
    import paddle
    import paddle.nn.functional as F

    from paddlemix.peft.lora import lora_layers

    shapes: dict[str, list[int]] = {}

    def keep_shape(name: str) -> Any:
        def hook(layer: Any, inputs: tuple, output: Any) -> None:  # returns None: the output stays unchanged
            shapes.setdefault(name, list(inputs[0].shape))

        return hook

    hooks = [layer.register_forward_post_hook(keep_shape(name)) for name, layer in lora_layers(model).items()]
    step.run(packs)
    for h in hooks:
        h.remove()
    total = 0.0
    for name, layer in lora_layers(model).items():
        x = paddle.randn(shapes[name])
        x.stop_gradient = False
        timings = {}
        for label, fn in (("lora", layer), ("base", lambda t, w=layer.weight, b=layer.bias: F.linear(t, w, b))):
            best = []
            for _ in range(repeats):
                start = time.perf_counter()
                fn(x).sum().backward()
                best.append(time.perf_counter() - start)
                x.clear_gradient()
            timings[label] = min(best)
        total += timings["lora"] - timings["base"]
    model.clear_gradients()
    return total


def callback_seconds(step: Any, packs: list[dict[str, np.ndarray]], steps: int) -> float:
    """Mean seconds per step of the trainer's callbacks and bookkeeping, each step logged."""
    from types import SimpleNamespace

    import paddle

    from paddlemix.datasets.collator import BATCH_META, to_tensors
    from paddlemix.datasets.encoded import SkipLog
    from paddlemix.trainer.callbacks import JsonlLogCallback, SkipBudgetCallback, ThroughputCallback
    from paddlemix.trainer.trainer import LogLastStep

    out = Path(tempfile.mkdtemp(prefix="profile-callbacks-"))
    skips = SkipLog(out / "skipped_samples.jsonl")
    counter = SimpleNamespace(text_tokens=0, image_tokens=0, slots=0, samples=0, rows=0, grad_norm=None)
    callbacks = [ThroughputCallback(counter, skips), JsonlLogCallback(), SkipBudgetCallback(skips), LogLastStep()]
    args = SimpleNamespace(output_dir=str(out))
    state = SimpleNamespace(global_step=0, max_steps=10**9, is_world_process_zero=True)
    control = SimpleNamespace(should_log=False)
    batch = step.collator(packs)
    input_ids = to_tensors({k: v for k, v in batch.items() if k not in BATCH_META})["input_ids"]
    start = time.perf_counter()
    for i in range(steps):
        images = int((input_ids == 3).sum())  # the trainer's per-step token counts
        counter.text_tokens += int(input_ids.numel()) - images
        counter.slots += int(input_ids.numel())
        state.global_step = i + 1
        for cb in callbacks:
            cb.on_step_end(args, state, control)
        logs = {"loss": 1.0, "learning_rate": 1e-4}
        for cb in callbacks:
            cb.on_log(args, state, control, logs=logs)
    del paddle
    return (time.perf_counter() - start) / steps


def profile(size: str, workdir: Path, steps: int) -> dict[str, float]:
    """Mean seconds per step of each phase at `size`, plus `lora` and `tokens`."""
    folder = step_bench.build_folder(size, workdir / size / "model")
    batches = step_bench.make_packs(folder, size)
    step = step_bench.paddle_step(folder)
    step.run(batches[0])  # warm-up
    times: dict[str, float] = {}
    tokens = 0
    for i in range(steps):
        packs = batches[(i + 1) % len(batches)]
        step.run(packs, times)
        tokens += step_bench.count_tokens(packs)
    result = {name: seconds / steps for name, seconds in times.items()}
    result["callbacks"] = callback_seconds(step, batches[0], 20)
    result["lora"] = lora_seconds(step.model, batches[0], step)
    result["tokens"] = tokens / steps
    return result


def print_table(size: str, r: dict[str, float]) -> None:
    total = sum(r[p] for p in PHASES)
    print(f"\n{size}: {r['tokens']:.0f} tokens/step, {1e3 * total:.1f} ms/step, "
          f"{1e6 * total / r['tokens']:.1f} us/token")  # fmt: skip
    print(f"{'phase':<28}{'ms/step':>10}{'share':>8}")
    for phase in PHASES:
        print(f"{phase:<28}{1e3 * r[phase]:>10.2f}{r[phase] / total:>8.1%}")
    print(f"{'  of fwd+bwd: LoRA layers':<28}{1e3 * r['lora']:>10.2f}{r['lora'] / total:>8.1%}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["tiny", "cut"], choices=sorted(step_bench.SIZES))
    parser.add_argument("--steps", nargs="+", type=int, default=[12, 2], help="timed steps per size, in order")
    parser.add_argument("--workdir", type=Path, default=None, help="keep model folders here (reused)")
    args = parser.parse_args()
    import paddle

    from paddlemix.utils.device import device_env

    device_env("cpu")
    paddle.set_device("cpu")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="step-profile-"))
    for size, steps in zip(args.sizes, args.steps + args.steps[-1:] * len(args.sizes)):
        print_table(size, profile(size, workdir, steps))


if __name__ == "__main__":
    main()
