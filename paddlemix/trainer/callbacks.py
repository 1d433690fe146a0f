"""Trainer callbacks: a JSONL log of every logged step, completion markers on checkpoints, token throughput."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from paddleformers.trainer import TrainerCallback

CHECKPOINT_DONE = ".complete"
TRAIN_LOG = "train_log.jsonl"


class JsonlLogCallback(TrainerCallback):
    """Append each log record (loss, lr, eval loss, step) to `output_dir/train_log.jsonl` on the main process."""

    def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any) -> None:
        if not logs or not state.is_world_process_zero:
            return
        record = {"step": state.global_step, **{k: v for k, v in logs.items() if isinstance(v, (int, float, str))}}
        with open(Path(args.output_dir) / TRAIN_LOG, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")


class CheckpointDoneCallback(TrainerCallback):
    """Mark a checkpoint folder complete after the trainer has written all of it, so resume skips partial ones."""

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if state.is_world_process_zero and folder.is_dir():
            (folder / CHECKPOINT_DONE).write_text(json.dumps({"step": state.global_step, "time": time.time()}))


class ThroughputCallback(TrainerCallback):
    """Add text and image tokens per second since the previous log to each log record."""

    def __init__(self, counter: Any):
        self.counter = counter
        self.last = (time.perf_counter(), 0, 0)

    def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any) -> None:
        if logs is None or "loss" not in logs:
            return
        now, text, image = time.perf_counter(), self.counter.text_tokens, self.counter.image_tokens
        seconds = max(now - self.last[0], 1e-9)
        logs["text_tokens_per_sec"] = round((text - self.last[1]) / seconds, 1)
        logs["image_tokens_per_sec"] = round((image - self.last[2]) / seconds, 1)
        self.last = (now, text, image)
