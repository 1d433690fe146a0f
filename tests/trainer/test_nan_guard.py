"""A non-finite loss stops training with the step and the batch's sample ids, after saving the last good state.

Paddle's cross-entropy stays finite even for NaN logits on CPU, so the fault is planted in the loss itself: any
batch holding a marker token gets a NaN loss. Everything else is the real run (arguments, data, trainer,
checkpoints).
"""

from __future__ import annotations

import json

import pytest

from paddlemix import arguments
from paddlemix.trainer.sft import run_sft
from paddlemix.trainer.trainer import MIXTrainer, NonFiniteLossError
from paddlemix.utils import checkpoints

pytestmark = pytest.mark.slow
MARKER, MARKER_ID = "<|box_start|>", 521  # id in the tiny tokenizer


def test_nan_loss_stops_with_step_samples_and_last_good_checkpoint(tiny_model_dir, shapes_data, tmp_path, monkeypatch):
    records = shapes_data["train"].read_text().splitlines()[:15]
    records.insert(12, json.dumps({"messages": [{"role": "user", "content": MARKER + " what?"},
                                                {"role": "assistant", "content": "red"}]}))  # fmt: skip
    data = tmp_path / "planted.jsonl"
    data.write_text("\n".join(r.replace('"images/', f'"{shapes_data["train"].parent}/images/') for r in records))
    compute_loss = MIXTrainer.compute_loss

    def planted(self, model, inputs, *args, **kwargs):
        loss = compute_loss(self, model, inputs, *args, **kwargs)
        if bool((inputs["input_ids"] == MARKER_ID).any()):
            loss = loss * float("nan")
        return loss

    monkeypatch.setattr(MIXTrainer, "compute_loss", planted)
    out = tmp_path / "out"
    raw = {"model_name_or_path": str(tiny_model_dir), "output_dir": str(out), "device": "cpu", "do_train": True,
           "dataset": {"train": [{"name": "chatml_dataset", "data_files": str(data)}]}, "max_steps": 8,
           "per_device_train_batch_size": 2, "max_length": 128, "save_steps": 100, "logging_steps": 1,
           "report_to": "none", "seed": 1,
           "split_special_tokens": False}  # fmt: skip
    with pytest.raises(NonFiniteLossError) as err:
        run_sft(arguments.parse(raw, "test"))
    message = str(err.value)
    assert "chatml_dataset:planted.jsonl#12" in message and "loss became nan at step" in message
    step = int(message.split("at step ")[1].split()[0])
    good = checkpoints.last_complete(out)
    assert good == out / f"checkpoint-{step - 1}"
    assert not (out / "model.safetensors").exists()
