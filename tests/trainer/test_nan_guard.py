"""A non-finite loss stops training with the step and the batch's sample ids, after saving the last good state.

The tiny model keeps its loss finite even with corrupt weights, so the fault is planted in its forward: any batch
holding a marker token gets a NaN loss. Everything else is the real run (arguments, data, trainer, checkpoints).
"""

from __future__ import annotations

import json

import pytest

from paddlemix import arguments
from paddlemix.models.adapter import ModelAdapter
from paddlemix.trainer.sft import run_sft
from paddlemix.trainer.trainer import NonFiniteLossError
from paddlemix.utils import checkpoints

pytestmark = pytest.mark.slow
MARKER = "<|box_start|>"


def test_nan_loss_stops_with_step_samples_and_last_good_checkpoint(tiny_model_dir, shapes_data, tmp_path, monkeypatch):
    records = shapes_data["train"].read_text().splitlines()[:15]
    records.insert(12, json.dumps({"messages": [{"role": "user", "content": MARKER + " what?"},
                                                {"role": "assistant", "content": "red"}]}))  # fmt: skip
    data = tmp_path / "planted.jsonl"
    data.write_text("\n".join(r.replace('"images/', f'"{shapes_data["train"].parent}/images/') for r in records))
    load = ModelAdapter.load_model

    def load_with_planted_nan(self, *args, **kwargs):
        model = load(self, *args, **kwargs)
        forward, marker = model.forward, 521  # <|box_start|> in the tiny tokenizer

        def planted(*a, **kw):
            a = a[1:] if a and a[0] is model else a  # paddle may pass the layer itself first
            out = forward(*a, **kw)
            if out.loss is not None and bool((kw["input_ids"] == marker).any()):
                out.loss = out.loss * float("nan")
            return out

        model.forward = planted
        return model

    monkeypatch.setattr(ModelAdapter, "load_model", load_with_planted_nan)
    out = tmp_path / "out"
    raw = {"model_name_or_path": str(tiny_model_dir), "output_dir": str(out), "device": "cpu", "do_train": True,
           "dataset": {"train": [{"name": "chatml_dataset", "data_files": str(data)}]}, "max_steps": 8,
           "per_device_train_batch_size": 2, "max_length": 128, "save_steps": 100, "logging_steps": 1,
           "report_to": "none", "seed": 1}  # fmt: skip
    with pytest.raises(NonFiniteLossError) as err:
        run_sft(arguments.parse(raw, "test"))
    message = str(err.value)
    assert "chatml_dataset:planted.jsonl#12" in message and "loss became nan at step" in message
    step = int(message.split("at step ")[1].split()[0])
    good = checkpoints.last_complete(out)
    assert good == out / f"checkpoint-{step - 1}"
    assert not (out / "model.safetensors").exists()
