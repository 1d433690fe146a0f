"""One sequence per pair vs the 2N batch for DPO: pairs/s, peak memory and vision-tower images per pair.

Same pairs (shapes images, a longer prompt so the prompt is most of the tokens, as in RLHF-V data), same LoRA
model, same step: policy forward + backward, reference forward with the adapters off. The 2N layout here is the
two full conversations of a pair as separate rows (prompt and images twice, as LLaMA-Factory and TRL batch them);
the one-sequence layout is `[prompt | chosen | rejected]`. Each layout runs in a fresh process so the peak
resident memory (VmHWM after a reset) is its own.

Usage: python benchmarks/dpo_pairs.py [--pairs 32] [--batch 4] [--steps 8] [--image 224]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LONG_PROMPT = ("Look carefully at the picture, describe to yourself the background, the position of the shape and "
               "its outline, and then answer this question with one word: ")  # fmt: skip


def run(mode: str, work: Path, pairs: int, batch: int, steps: int) -> dict:
    import numpy as np
    import paddle

    from paddlemix.auto import AutoModelMIX, AutoProcessorMIX
    from paddlemix.datasets.collator import Collator, to_tensors
    from paddlemix.datasets.pair_packing import PairProcessor
    from paddlemix.datasets.pairs import read_pair
    from paddlemix.models import adapter_for
    from paddlemix.peft.lora import apply_lora, lora_modules
    from paddlemix.processors.chat_template import template_for
    from paddlemix.testing.lora import perturb_lora
    from paddlemix.trainer.dpo_loss import PreferenceLoss
    from paddlemix.trainer.preference import PreferenceStage, lora_reference
    from paddlemix.utils.memory import peak_resident_bytes, reset_peak

    model_dir = work / "model"
    processor = AutoProcessorMIX.from_pretrained(model_dir)
    adapter = adapter_for(model_dir)
    model = apply_lora(AutoModelMIX.from_pretrained(model_dir), lora_modules(model_dir, adapter, None), 8, 16)
    perturb_lora(model)
    encoder = PairProcessor(adapter.sample_processor(processor, 4096), adapter.position_fn(model.config),
                            one_sequence=mode == "one_sequence")  # fmt: skip
    template = template_for(processor)
    records = [json.loads(line) for line in (work / "pairs.jsonl").read_text().splitlines()][:pairs]
    features = [encoder(read_pair(r, work), template) for r in records]
    collate = Collator(processor.tokenizer.pad_token_id)
    stage = PreferenceStage(PreferenceLoss("sigmoid", 0.1), lora_reference)
    calls = [0]
    model.model.visual.register_forward_post_hook(lambda *a: calls.__setitem__(0, calls[0] + 1))
    optimizer = paddle.optimizer.AdamW(1e-4, parameters=[p for p in model.parameters() if not p.stop_gradient])
    images = 0
    reset_peak()
    start, done = time.perf_counter(), 0
    for step in range(steps):
        rows = features[(step * batch) % len(features) :][:batch]
        if mode == "two_rows":  # split each pair's two isolated sequences into rows of their own
            rows = [half for f in rows for half in split_pair(f)]
        inputs = to_tensors(collate(rows))
        images += len(inputs.get("image_grid_thw", []))
        loss = stage(model, inputs)
        loss.backward()
        optimizer.step()
        optimizer.clear_grad()
        done += batch
    seconds = time.perf_counter() - start
    return {"mode": mode, "pairs_per_second": done / seconds, "peak_mb": peak_resident_bytes() / 2**20,
            "images_per_pair": images / done, "vision_calls_per_step": calls[0] / steps,
            "tokens_per_pair": float(np.mean([len(f["input_ids"]) for f in features]))}  # fmt: skip


def split_pair(feature: dict) -> list[dict]:
    """A two-sequence pair feature as two rows (the 2N batch): chosen row and rejected row with its own images."""
    import numpy as np

    cut = int(feature["mask_ends"][0])  # the chosen sequence ends where its columns stop being visible
    side = feature["answer_segment"]
    rows = []
    for s, (lo, hi) in enumerate(((0, cut), (cut, len(feature["input_ids"])))):
        keep = side == s
        row = {"input_ids": feature["input_ids"][lo:hi], "position_ids": feature["position_ids"][:, lo:hi],
               "mask_ends": np.full(hi - lo, hi - lo, dtype="int32"), "answer_index": feature["answer_index"][keep] - lo,
               "answer_targets": feature["answer_targets"][keep], "answer_segment": side[keep],
               "pair_count": s}  # fmt: skip
        rows.append(row)
    grids = feature.get("image_grid_thw")
    if grids is not None:  # the images of each side, in order (each side shows the pair's images once)
        half = len(grids) // 2
        patches = [int(np.prod(g)) for g in grids]
        split = sum(patches[:half])
        rows[0].update(pixel_values=feature["pixel_values"][:split], image_grid_thw=grids[:half])
        rows[1].update(pixel_values=feature["pixel_values"][split:], image_grid_thw=grids[half:])
    # segments 2k (chosen row) and 2k + 1 (rejected row): the pair is counted once, with its rejected row
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=32)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--image", type=int, default=224)
    parser.add_argument("--mode", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.mode:
        print(json.dumps(run(args.mode, Path(args.work), args.pairs, args.batch, args.steps)))
        return
    from paddlemix.testing.pairs import write_shape_pairs
    from paddlemix.testing.shapes import make_shapes_dataset
    from paddlemix.testing.tiny_model import DEMO_SIZE, build_tiny_qwen2_5_vl

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        build_tiny_qwen2_5_vl(work / "model", seed=0, **DEMO_SIZE)
        shapes = make_shapes_dataset(work / "shapes", n_train=args.pairs, n_eval=4, seed=0,
                                     image_size=(args.image, args.image))  # fmt: skip
        pairs = write_shape_pairs(shapes["train"], work / "pairs.jsonl", "swift")
        lines = [json.loads(line) for line in pairs.read_text().splitlines()]
        for r in lines:
            r["messages"][0]["content"] = r["messages"][0]["content"].replace("<image>", "<image>" + LONG_PROMPT)
        pairs.write_text("\n".join(json.dumps(r) for r in lines) + "\n")
        results = {}
        for mode in ("one_sequence", "two_rows"):
            cmd = [sys.executable, __file__, "--mode", mode, "--work", str(work), "--pairs", str(args.pairs),
                   "--batch", str(args.batch), "--steps", str(args.steps)]  # fmt: skip
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
            results[mode] = json.loads(out)
            print(json.dumps(results[mode]))
    one, two = results["one_sequence"], results["two_rows"]
    print(f"one sequence per pair vs 2N batch: pairs/s x{one['pairs_per_second'] / two['pairs_per_second']:.2f}, "
          f"peak memory x{one['peak_mb'] / two['peak_mb']:.2f}, images through the vision tower per pair and "
          f"forward {one['images_per_pair']:.0f} vs {two['images_per_pair']:.0f} (policy + reference: "
          f"{2 * one['images_per_pair']:.0f} vs {2 * two['images_per_pair']:.0f})")  # fmt: skip


if __name__ == "__main__":
    main()
