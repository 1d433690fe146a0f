"""Effective (non-pad) training tokens per second with MIXToken packing versus padding, measured in one run.

The demo's tiny Qwen2.5-VL on CPU trains on the same variable-length samples (text-only and single-image chats)
twice: in batches of 8 padded to their longest sample, and as packed rows of --max_length tokens. Each step is a
full forward, backward and AdamW update; only real tokens count.
Usage: python benchmarks/throughput.py [--samples 200] [--max_length 256] [--rows 4] [--batch 8] [--seed 0]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import paddle

from paddlemix.auto import AutoModelMIX, AutoProcessorMIX
from paddlemix.datasets.collator import pad_batch
from paddlemix.datasets.conversation import Message, Sample, SampleError
from paddlemix.datasets.packing import BestFitPacker, build_pack, pack_batch
from paddlemix.models import adapter_for
from paddlemix.processors.chat_template import template_for
from paddlemix.testing.shapes import make_shapes_dataset
from paddlemix.testing.tiny_model import DEMO_SIZE, build_tiny_qwen2_5_vl

WORDS = "the a red blue green circle square triangle is on left right of and small large image shape colour".split()


def make_samples(n: int, images: list[str], rng: np.random.Generator) -> list[Sample]:
    """Chats whose lengths follow a long-tailed mix, a third of them with an image."""
    out = []
    for i in range(n):
        words = int(np.clip(rng.lognormal(3.6, 0.8), 4, 300))
        answer = " ".join(rng.choice(WORDS, size=max(words // 3, 1)))
        question = " ".join(rng.choice(WORDS, size=words))
        if i % 3 == 0:
            out.append(Sample((Message("user", "<image>" + question), Message("assistant", answer)), (images[i],)))
        else:
            out.append(Sample((Message("user", question), Message("assistant", answer))))
    return out


def train_tokens_per_second(model, batches: list[dict]) -> float:
    optimizer = paddle.optimizer.AdamW(1e-4, parameters=model.parameters())
    step = lambda b: model(**{k: paddle.to_tensor(v) for k, v in b.items() if k != "real"}).loss  # noqa: E731
    loss = step(batches[0])  # warm-up, not timed
    loss.backward(), optimizer.step(), optimizer.clear_grad()
    start = time.perf_counter()
    for batch in batches:
        loss = step(batch)
        loss.backward()
        optimizer.step()
        optimizer.clear_grad()
    return sum(b["real"] for b in batches) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--max_length", type=int, default=256)
    parser.add_argument("--rows", type=int, default=4, help="packed rows per step")
    parser.add_argument("--batch", type=int, default=8, help="padded samples per step")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    paddle.set_device("cpu")
    work = Path(tempfile.mkdtemp(prefix="throughput-"))
    model_dir = build_tiny_qwen2_5_vl(work / "model", **DEMO_SIZE)
    files = make_shapes_dataset(work / "shapes", n_train=args.samples, n_eval=8)
    images = sorted(str(p) for p in (files["train"].parent / "images").glob("train_*.png"))
    processor = AutoProcessorMIX.from_pretrained(model_dir)
    adapter = adapter_for(model_dir)
    encoder = adapter.sample_processor(processor, args.max_length)
    template = template_for(processor)
    encoded = []
    for sample in make_samples(args.samples, images, np.random.default_rng(args.seed)):
        try:
            encoded.append(encoder(sample, template))
        except SampleError:  # longer than --max_length
            pass
    lengths = [len(e["input_ids"]) for e in encoded]
    pad_id = processor.tokenizer.pad_token_id
    model = AutoModelMIX.from_pretrained(model_dir)
    positions = adapter.position_fn(model.config)

    padded = []
    for i in range(0, len(encoded), args.batch):
        chunk = encoded[i : i + args.batch]
        padded.append({**pad_batch(chunk, pad_id, 8), "real": sum(len(e["input_ids"]) for e in chunk)})
    plans = list(BestFitPacker(args.max_length, 1000).pack(enumerate(lengths)))
    packs = [build_pack([encoded[i] for i in plan], positions) for plan in plans]
    packed = []
    for i in range(0, len(packs), args.rows):
        rows = packs[i : i + args.rows]
        packed.append({**pack_batch(rows, pad_id, args.max_length), "real": sum(len(p["input_ids"]) for p in rows)})

    slots_padded = sum(b["input_ids"].size for b in padded)
    slots_packed = sum(b["input_ids"].size for b in packed)
    print(f"{len(encoded)} samples, {sum(lengths)} real tokens, lengths {min(lengths)}-{max(lengths)} "
          f"(mean {np.mean(lengths):.0f})")  # fmt: skip
    print(f"padding: {len(padded)} steps, fill {sum(lengths) / slots_padded:.3f}")
    print(f"packing: {len(packed)} steps, fill {sum(lengths) / slots_packed:.3f}")
    padded_tps = train_tokens_per_second(model, padded)
    packed_tps = train_tokens_per_second(model, packed)
    print(f"effective tokens/s  padding {padded_tps:,.0f}  MIXToken {packed_tps:,.0f}  "
          f"ratio {packed_tps / padded_tps:.2f}x")  # fmt: skip


if __name__ == "__main__":
    main()
