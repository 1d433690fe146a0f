"""Time and memory until MIXToken delivers its first training batch, for growing data sets (10k and 100k records).

Each size runs in a fresh process through the same builders the fine-tuning tool uses (arguments -> sources ->
mix -> pack stream -> collator). The stream plans one window of samples before the first pack, so neither number
should grow much with the data set; what does grow is the record index (one file offset per JSONL line).
Usage: python benchmarks/first_step.py [--sizes 10000 100000] [--window 1000]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from paddlemix.testing.shapes import make_shapes_dataset
from paddlemix.testing.tiny_model import build_tiny_qwen2_5_vl


def write_records(path: Path, n: int, images: list[str]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            question = "What color is the shape? " * (1 + i % 7)
            record = {"images": [images[i % len(images)]], "messages": [
                {"role": "user", "content": "<image>" + question}, {"role": "assistant", "content": "red"}]}  # fmt: skip
            f.write(json.dumps(record) + "\n")


def measure(model_dir: str, data_file: str, window: int) -> dict[str, float]:
    """Runs in the child process: build the train stream and take the first batch."""
    start = time.perf_counter()
    from paddlemix import arguments
    from paddlemix.datasets.collator import Collator
    from paddlemix.datasets.encoded import SkipLog
    from paddlemix.models import adapter_for
    from paddlemix.trainer.sft import build_datasets

    raw = {"model_name_or_path": model_dir, "output_dir": str(Path(data_file).parent / "out"), "mixtoken": True,
           "pack_window": window, "max_steps": 10, "max_length": 512, "device": "cpu", "report_to": "none",
           "dataset": {"train": [{"name": "chatml_dataset", "data_files": data_file}]}}  # fmt: skip
    args = arguments.parse(raw, "benchmark")
    adapter = adapter_for(model_dir)
    processor = adapter.load_processor(model_dir)
    config = adapter.load_config(model_dir)
    imports_done = time.perf_counter()
    train, _ = build_datasets(args, processor, adapter, config, SkipLog())
    batch = Collator(processor.tokenizer.pad_token_id)([next(iter(train)) for _ in range(2)])
    assert batch["input_ids"].shape[0] == 2
    return {
        "seconds_to_first_batch": time.perf_counter() - imports_done,
        "seconds_including_imports": time.perf_counter() - start,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        print(json.dumps(measure(sys.argv[2], sys.argv[3], int(sys.argv[4]))))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--window", type=int, default=1000)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="first-step-"))
    model_dir = build_tiny_qwen2_5_vl(work / "model")
    files = make_shapes_dataset(work / "shapes", n_train=16, n_eval=8)
    images = sorted(str(p) for p in (files["train"].parent / "images").glob("train_*.png"))
    rows = []
    for n in args.sizes:
        data = work / f"records_{n}.jsonl"
        write_records(data, n, images)
        out = subprocess.run([sys.executable, __file__, "--child", str(model_dir), str(data), str(args.window)],
                             capture_output=True, text=True, check=True)  # fmt: skip
        rows.append((n, json.loads(out.stdout.strip().splitlines()[-1])))
    print(f"{'records':>9} {'s to first batch':>17} {'peak RSS MB':>12}")
    for n, r in rows:
        print(f"{n:>9,} {r['seconds_to_first_batch']:>17.2f} {r['peak_rss_mb']:>12.0f}")
    (n0, a), (n1, b) = rows[0], rows[-1]
    print(f"{n1 // n0}x the records -> {b['seconds_to_first_batch'] / a['seconds_to_first_batch']:.2f}x the time, "
          f"{b['peak_rss_mb'] / a['peak_rss_mb']:.2f}x the memory")  # fmt: skip


if __name__ == "__main__":
    main()
