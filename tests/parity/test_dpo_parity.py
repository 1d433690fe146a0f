"""The first logged DPO loss and rewards of the real tool against transformers 4.57.1 + PEFT and DPO's formula.

A tiny Qwen2.5-VL, a random non-zero PEFT adapter given as `lora_path` (the policy; learning rate 0), the base as
reference (adapters off here, PEFT's `disable_adapter()` there), four pairs (with images, one multi-turn) in one
batch, sigmoid loss with beta 0.1. The token ids of each side come from our encoder (processor parity is tested in
test_chat_template_parity.py); both sides run the model on them and score the same labelled tokens.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from hf_parity import REF_PYTHON, requires_reference

from paddlemix.arguments import DatasetSource
from paddlemix.auto import AutoProcessorMIX
from paddlemix.datasets.pairs import PairSourceDataset
from paddlemix.models import ADAPTERS
from paddlemix.processors.chat_template import template_for
from paddlemix.testing.pairs import write_shape_pairs
from paddlemix.testing.peft_adapter import write_peft_adapter

HERE = Path(__file__).parent
CONFIG = HERE.parents[1] / "paddlemix" / "config" / "tiny" / "lora_dpo_argument.json"
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
METRICS = ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "logps/chosen",
           "logps/rejected")  # fmt: skip


@requires_reference
def test_first_dpo_loss_and_rewards_equal_peft_and_the_formula(workspace: Path, shapes_data: dict, run_tool) -> None:
    model_dir = workspace / "tiny_qwen2_5_vl"
    write_peft_adapter(workspace / "adapter", model_dir, ADAPTERS["qwen2_5_vl"].parameter_name, TARGETS, seed=5,
                       std=0.2)  # fmt: skip
    pairs_file = write_shape_pairs(shapes_data["train"], workspace / "pairs" / "all.jsonl", "swift", seed=1)
    lines = pairs_file.read_text().splitlines()[:3]
    multi = json.loads(lines[0])
    multi["messages"] = [{"role": "user", "content": "Hello."}, {"role": "assistant", "content": "Hi."},
                         *multi["messages"]]  # fmt: skip
    pairs_file.write_text("\n".join([*lines, json.dumps(multi)]) + "\n")
    run_tool("supervised_finetune.py", str(CONFIG), "--lora_path", "adapter", "--learning_rate", "0",
             "--max_steps", "1", "--do_eval", "false", "--evaluation_strategy", "no", "--output_dir", "out",
             "--dataset", json.dumps({"train": [{"name": "chatml_dataset", "data_files": "pairs/all.jsonl"}]}),
             cwd=workspace)  # fmt: skip
    first = json.loads((workspace / "out" / "train_log.jsonl").read_text().splitlines()[0])

    processor = AutoProcessorMIX.from_pretrained(model_dir)
    encoder = ADAPTERS["qwen2_5_vl"].sample_processor(processor, 256)
    template = template_for(processor)
    sides = {}
    for k, pair in enumerate(PairSourceDataset(DatasetSource("chatml_dataset", [str(pairs_file)]))):
        for s, sample in enumerate((pair.chosen_sample(), pair.rejected_sample())):
            for key, value in encoder(sample, template).items():
                sides[f"{key}_{2 * k + s}"] = value
    np.savez(workspace / "sides.npz", **sides)
    args = [str(HERE / "hf_dpo.py"), str(model_dir), str(workspace / "adapter"), str(workspace / "sides.npz"),
            "0.1", str(workspace / "ref.json")]  # fmt: skip
    proc = subprocess.run([REF_PYTHON, *args], cwd=HERE, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    ref = json.loads((workspace / "ref.json").read_text())
    print({k: (first[k], ref[k]) for k in ("loss", *METRICS)})
    assert abs(ref["rewards/margins"]) > 1e-3  # the adapter really moves the policy away from the reference
    assert first["loss"] == pytest.approx(ref["loss"], abs=1e-4)
    for key in METRICS:
        assert first[key] == pytest.approx(ref[key], abs=1e-4), key
