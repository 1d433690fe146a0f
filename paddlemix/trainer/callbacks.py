"""Trainer callbacks: a JSONL log of every logged step, token throughput with row fill, the skip budget."""

from __future__ import annotations

import json
import resource
import time
from pathlib import Path
from typing import Any

from paddleformers.trainer import TrainerCallback

TRAIN_LOG = "train_log.jsonl"


class JsonlLogCallback(TrainerCallback):
    """Append each log record (loss, lr, eval loss, step) to `output_dir/train_log.jsonl` on the main process."""

    def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any) -> None:
        if not logs or not state.is_world_process_zero:
            return
        record = {"step": state.global_step, **{k: v for k, v in logs.items() if isinstance(v, (int, float, str))}}
        with open(Path(args.output_dir) / TRAIN_LOG, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")


def peak_memory_mb() -> float:
    """Peak accelerator memory when a GPU is in use, else the process's peak resident memory."""
    import paddle

    if paddle.device.is_compiled_with_cuda() and paddle.device.cuda.device_count() > 0:
        return paddle.device.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class ThroughputCallback(TrainerCallback):
    """Add text and image tokens, samples and rows per second and the fill (real tokens / row slots) since the
    previous log, the samples skipped so far and the peak memory."""

    def __init__(self, counter: Any, skip_log: Any = None):
        self.counter = counter
        self.skip_log = skip_log
        self.last = (time.perf_counter(), 0, 0, 0)
        self.last_counts = (0, 0)

    def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any) -> None:
        if logs is None or "loss" not in logs:
            return
        c = self.counter
        now, text, image, slots = time.perf_counter(), c.text_tokens, c.image_tokens, c.slots
        seconds = max(now - self.last[0], 1e-9)
        logs["text_tokens_per_sec"] = round((text - self.last[1]) / seconds, 1)
        logs["image_tokens_per_sec"] = round((image - self.last[2]) / seconds, 1)
        logs["fill"] = round((text + image - self.last[1] - self.last[2]) / max(slots - self.last[3], 1), 4)
        self.last = (now, text, image, slots)
        # paddleformers' interval_samples_per_second counts batch rows; these count samples (also inside packs).
        samples, rows = getattr(c, "samples", 0), getattr(c, "rows", 0)
        logs["interval_samples_per_second"] = round((samples - self.last_counts[0]) / seconds, 4)
        logs["interval_rows_per_second"] = round((rows - self.last_counts[1]) / seconds, 4)
        self.last_counts = (samples, rows)
        logs["peak_memory_mb"] = round(peak_memory_mb(), 1)
        if getattr(c, "grad_norm", None) is not None:
            logs["grad_norm"] = float(f"{c.grad_norm:.6g}")  # significant digits: a LoRA norm of 3e-6 is not 0
        if self.skip_log is not None:
            logs["skipped"] = sum(self.skip_log.skipped.values())


class SkipBudgetCallback(TrainerCallback):
    """At every step end, merge the counts and skips of all ranks (`SkipLog.sync`, on every rank), then stop the
    run once they hold too many bad samples (`max_skip_ratio` on the totals of all ranks, so every rank stops at
    the same step with the same message)."""

    def __init__(self, skip_log: Any):
        self.skip_log = skip_log

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.skip_log.sync()
        self.skip_log.raise_if_exceeded()
