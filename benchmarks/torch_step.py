"""The PyTorch side of benchmarks/vs_torch.py: plain transformers + PEFT training on the batches this toolkit made.

Runs in the reference environment (torch + transformers 4.57.1 + peft), one thread, as a worker that answers one
JSON command per stdin line with one JSON line:
  python benchmarks/torch_step.py MODEL_DIR ADAPTER_DIR BATCHES.npz
  {"steps": N}  -> {"seconds": [per step], "losses": [per step]}   (continues through the batches cyclically)
  {"micro": N}  -> {"seconds": median of N steps of 8 x (Linear + SiLU) + AdamW}
The step is what a PyTorch fine-tuning toolkit runs: the model's forward with SDPA attention and a block-diagonal
causal mask of the packed rows (bool [B, 1, L, L]), full logits, token-mean cross-entropy over labelled positions
(labels are already shifted by the packer), backward, AdamW (lr 1e-4, no weight decay).
"""

from __future__ import annotations

import json
import os
import sys
import time

for _key in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_key] = "1"

import numpy as np  # noqa: E402
import torch  # noqa: E402

LEARNING_RATE = 1e-4


def block_mask(startend: np.ndarray) -> torch.Tensor:
    """FlashMask row indices [B, 1, L] -> bool [B, 1, L, L]: query i sees key j when j <= i < startend[j]."""
    length = startend.shape[-1]
    rows = np.arange(length)[:, None]  # [L, 1] query
    cols = np.arange(length)[None, :]  # [1, L] key
    allowed = (cols <= rows)[None] & (rows[None] < startend[:, 0][:, None, :])  # [B, L, L]
    return torch.from_numpy(allowed[:, None])


def load_batches(path: str) -> list[dict[str, torch.Tensor]]:
    data = np.load(path)
    steps: dict[int, dict[str, torch.Tensor]] = {}
    for key in data.files:
        step, name = key.split("/")
        value = data[key]
        if name == "attn_mask_startend_row_indices":
            steps.setdefault(int(step), {})["attention_mask"] = block_mask(value)
        else:
            steps.setdefault(int(step), {})[name] = torch.from_numpy(value)
    return [steps[i] for i in sorted(steps)]


def load_model(model_dir: str, adapter_dir: str) -> torch.nn.Module:
    from peft import PeftModel
    from transformers import Qwen2_5_VLForConditionalGeneration

    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(
        model_dir, dtype=torch.float32, attn_implementation="sdpa"
    )
    model = PeftModel.from_pretrained(model, adapter_dir, is_trainable=True)
    model.train()
    return model


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, batch: dict[str, torch.Tensor]) -> float:
    labels = batch["labels"]
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    logits = model(**inputs, use_cache=False).logits  # [B, L, vocab]
    loss_sum = torch.nn.functional.cross_entropy(
        logits.flatten(0, 1).float(), labels.flatten(), ignore_index=-100, reduction="sum"
    )
    loss = loss_sum / (labels != -100).sum()
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.item()


def micro_benchmark(steps: int, width: int = 128, rows: int = 64) -> float:
    """Median seconds of one step of 8 x (Linear + SiLU) + AdamW, as `step_bench.micro_benchmark_paddle`."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(*[m for _ in range(8) for m in (torch.nn.Linear(width, width), torch.nn.SiLU())])
    opt = torch.optim.AdamW(net.parameters(), 1e-3, weight_decay=0.0)
    x = torch.randn(rows, width)
    out = []
    for _ in range(steps + 3):
        start = time.perf_counter()
        net(x).mean().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        out.append(time.perf_counter() - start)
    return float(np.median(out[3:]))


def main() -> None:
    torch.set_num_threads(1)
    model_dir, adapter_dir, batches_path = sys.argv[1:4]
    model = load_model(model_dir, adapter_dir)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], LEARNING_RATE, weight_decay=0.0)
    batches = load_batches(batches_path)
    position = 0
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        command = json.loads(line)
        if "micro" in command:
            print(json.dumps({"seconds": micro_benchmark(int(command["micro"]))}), flush=True)
            continue
        seconds, losses = [], []
        for _ in range(int(command["steps"])):
            start = time.perf_counter()
            losses.append(train_step(model, optimizer, batches[position % len(batches)]))
            seconds.append(time.perf_counter() - start)
            position += 1
        print(json.dumps({"seconds": seconds, "losses": losses}), flush=True)


if __name__ == "__main__":
    main()
