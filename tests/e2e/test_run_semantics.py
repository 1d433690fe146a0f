"""Runs that mean what their settings say: per-epoch sampling, the eval loss, the best checkpoint, resuming with other
batch settings, finished output folders and the last step's log, through the real `run_sft` on the tiny model.

The trained samples are counted by a data hook on `MIXTrainer.count_trained`, which sees every trained batch's
sample ids ("source#record").
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from paddlemix import arguments
from paddlemix.trainer.report import SUMMARY
from paddlemix.trainer.sft import run_sft
from paddlemix.trainer.trainer import MIXTrainer
from paddlemix.utils import checkpoints
from paddlemix.utils.errors import UserError

pytestmark = pytest.mark.slow


@pytest.fixture()
def sixteen(shapes_data: dict[str, Path], tmp_path: Path) -> Path:
    """16 shapes records with absolute image paths."""
    train = shapes_data["train"]
    records = [json.loads(line) for line in train.read_text().splitlines()[:16]]
    for r in records:
        r["images"] = [str(train.parent / p) for p in r["images"]]
    path = tmp_path / "sixteen.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.fixture()
def trained(monkeypatch) -> list[list[str]]:
    """Each trained micro-batch's sample ids, in training order."""
    batches: list[list[str]] = []
    count = MIXTrainer.count_trained

    def hook(self, sample_ids, skips):
        batches.append([str(s) for s in sample_ids])
        return count(self, sample_ids, skips)

    monkeypatch.setattr(MIXTrainer, "count_trained", hook)
    return batches


def run(model: Path, data: Path, out: Path, **keys) -> dict:
    raw = {"model_name_or_path": str(model), "output_dir": str(out), "device": "cpu", "do_train": True,
           "dataset": {"train": [{"name": "chatml_dataset", "data_files": str(data)}]}, "max_length": 128,
           "per_device_train_batch_size": 4, "save_strategy": "no", "logging_steps": 1, "report_to": "none",
           "seed": 3, **keys}  # fmt: skip
    return run_sft(arguments.parse(raw, "test.json"))


def records(batches: list[list[str]]) -> list[int]:
    return [int(s.rsplit("#", 1)[1]) for batch in batches for s in batch]


@pytest.mark.parametrize("mixtoken", [False, True])
def test_half_rate_trains_a_fresh_half_each_epoch(tiny_model_dir, sixteen, tmp_path, trained, mixtoken) -> None:
    """sampling_rate 0.5 over 3 epochs of 16 records: 8 distinct records per epoch, epochs 0 and 1 disjoint (all 16
    together), and the same draws again with the same seed."""
    source = {"name": "chatml_dataset", "data_files": str(sixteen), "sampling_rate": 0.5}
    keys = {"dataset": {"train": [source]}, "num_train_epochs": 3, "per_device_train_batch_size": 2}
    if mixtoken:  # a window of one sample keeps the stream in epoch order, so epochs can be told apart
        keys |= {"mixtoken": True, "pack_window": 1}
    run(tiny_model_dir, sixteen, tmp_path / "a", **keys)
    seen = records(trained)
    assert len(seen) == 24 or (mixtoken and 24 <= len(seen) < 28)  # the last step's packs may reach epoch 4
    epochs = [seen[0:8], seen[8:16], seen[16:24]]
    assert [len(set(e)) for e in epochs] == [8, 8, 8]
    assert set(epochs[0]) | set(epochs[1]) == set(range(16))
    first = list(seen)
    trained.clear()
    run(tiny_model_dir, sixteen, tmp_path / "b", **keys)
    assert records(trained) == first


def test_eval_loss_is_the_same_at_every_eval_batch_size(tiny_model_dir, shapes_data, uneven_answers, tmp_path) -> None:
    """The eval loss is the token-weighted mean over the whole eval set: on 8 records with 4- and 45-token answers,
    batch 1, 2 and 5 (5 leaves a batch of 3) give the same value. The mean of per-batch means that paddleformers
    reports gave 6.3236 / 6.3413 / 6.3406 here."""
    losses = []
    for size in (1, 2, 5):
        metrics = run(tiny_model_dir, shapes_data["train"], tmp_path / f"e{size}", do_train=False, do_eval=True,
                      evaluation_strategy="steps", per_device_eval_batch_size=size, max_length=256,
                      dataset={"train": [{"name": "chatml_dataset", "data_files": str(shapes_data["train"])}],
                               "eval": [{"name": "chatml_dataset", "data_files": str(uneven_answers)}]})  # fmt: skip
        losses.append(metrics["eval_loss"])
    assert losses[1] == pytest.approx(losses[0], rel=1e-6) and losses[2] == pytest.approx(losses[0], rel=1e-6)


@pytest.mark.parametrize("lora", [False, True])
def test_best_checkpoint_is_the_final_output_and_survives_rotation(tiny_model_dir, sixteen, tmp_path, lora) -> None:
    """load_best_model_at_end with greater_is_better on eval_loss (so the worst checkpoint counts as best: the
    first, since the loss falls) and save_total_limit 1: checkpoint-2 is kept beside the newest, and the final
    adapter equals checkpoint-2's; the final full model equals the model of a run stopped at step 2 (constant
    learning rate, so the first two steps are the same)."""
    out = tmp_path / "best"
    data = {"train": [{"name": "chatml_dataset", "data_files": str(sixteen)}],
            "eval": [{"name": "chatml_dataset", "data_files": str(sixteen)}]}  # fmt: skip
    keys = {"learning_rate": 0.002, "lr_scheduler_type": "constant", "warmup_ratio": 0.0, "lora": lora}
    metrics = run(tiny_model_dir, sixteen, out, max_steps=6, do_eval=True, evaluation_strategy="steps", eval_steps=2,
                  save_strategy="steps", save_steps=2, save_total_limit=1, load_best_model_at_end=True,
                  metric_for_best_model="eval_loss", greater_is_better=True, dataset=data, **keys)  # fmt: skip
    assert metrics["best_checkpoint"] == "checkpoint-2"
    assert sorted(p.name for p in checkpoints.checkpoints(out)) == ["checkpoint-2", "checkpoint-6"]
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    evals: dict[int, float] = {}
    for r in log:  # the first evaluation of each step; the final one (of the best weights) comes last
        if "eval_loss" in r:
            evals.setdefault(r["step"], r["eval_loss"])
    assert metrics["best_eval_loss"] == max(evals.values()) == evals[2] > evals[6]
    assert metrics["eval_loss"] == pytest.approx(evals[2], rel=1e-6)  # the final evaluation saw the best weights
    name = "adapter_model.safetensors" if lora else "model.safetensors"
    final = load_file(out / name)
    if lora:
        best = load_file(out / "checkpoint-2" / name)
        last = load_file(out / "checkpoint-6" / name)
    else:
        run(tiny_model_dir, sixteen, tmp_path / "two", max_steps=2, **keys)
        best = load_file(tmp_path / "two" / name)
        run(tiny_model_dir, sixteen, tmp_path / "six", max_steps=6, **keys)
        last = load_file(tmp_path / "six" / name)
    assert [k for k in best if not np.array_equal(best[k], last[k])]  # the steps after 2 changed weights
    assert sorted(final) == sorted(best)
    for k in best:
        np.testing.assert_allclose(final[k], best[k], rtol=0, atol=1e-6, err_msg=k)


@pytest.mark.parametrize("mixtoken", [False, True])
def test_resume_with_a_smaller_global_batch_trains_each_sample_once(tiny_model_dir, sixteen, tmp_path, trained,
                                                                    mixtoken):  # fmt: skip
    """Global batch 4 for 2 steps (8 samples, checkpoint-2), then the same run resumed at global batch 2 (batch 1 x
    accumulation 2): the other 8 samples of the epoch train once each, none twice. With MIXToken (max_length 100:
    two samples per pack, 8 packs per epoch) the first run trains 1 step of 4 packs and the resumed one the other
    4 packs in 2 steps."""
    out = tmp_path / "resume"
    keys = {"save_strategy": "steps", "save_steps": 1 if mixtoken else 2, "num_train_epochs": 1}
    if mixtoken:
        keys |= {"mixtoken": True, "max_length": 100, "pack_window": 1}
    run(tiny_model_dir, sixteen, out, max_steps=1 if mixtoken else 2, **keys)
    first = records(trained)
    trained.clear()
    run(tiny_model_dir, sixteen, out, per_device_train_batch_size=1, gradient_accumulation_steps=2, **keys)
    second = records(trained)
    assert len(first) == 8 and len(second) == 8
    assert Counter(first + second) == Counter(range(16))
    last = checkpoints.last_complete(out)
    assert (last.name, checkpoints.progress(last)["rows"]) == (
        ("checkpoint-4", 8) if mixtoken else ("checkpoint-8", 16)
    )


def test_resume_that_no_step_of_the_new_batch_fits_is_refused(tiny_model_dir, sixteen, tmp_path) -> None:
    out = tmp_path / "refuse"
    keys = {"save_strategy": "steps", "save_steps": 1, "num_train_epochs": 1, "per_device_train_batch_size": 2}
    run(tiny_model_dir, sixteen, out, max_steps=1, **keys)  # 2 samples consumed
    with pytest.raises(UserError) as err:
        run(tiny_model_dir, sixteen, out, **{**keys, "per_device_train_batch_size": 4})
    message = str(err.value)
    assert "global batch of 2" in message and "per_device_train_batch_size 4" in message
    assert "\n" not in message


def test_finished_output_dir_is_not_retrained(tiny_model_dir, sixteen, tmp_path) -> None:
    out = tmp_path / "done"
    run(tiny_model_dir, sixteen, out, max_steps=1)
    model = (out / "model.safetensors").read_bytes()
    with pytest.raises(UserError) as err:
        run(tiny_model_dir, sixteen, out, max_steps=1)
    assert "finished run" in str(err.value) and "overwrite_output_dir" in str(err.value)
    assert (out / "model.safetensors").read_bytes() == model
    run(tiny_model_dir, sixteen, out, max_steps=1, overwrite_output_dir=True)


@pytest.mark.parametrize("length", [{"max_steps": 2}, {"num_train_epochs": 1}])
def test_rerun_ending_at_its_last_checkpoint_trains_nothing(tiny_model_dir, sixteen, tmp_path, length) -> None:
    """A run that saved a checkpoint at its last step, run again: paddleformers resumed there and trained one step
    past the end (step 3 of max_steps 2), changing the final model."""
    out = tmp_path / "again"
    keys = {**length, "save_strategy": "steps", "save_steps": 2, "per_device_train_batch_size": 8}
    run(tiny_model_dir, sixteen, out, **keys)
    assert checkpoints.step_of(checkpoints.last_complete(out)) == 2
    model = (out / "model.safetensors").read_bytes()
    with pytest.raises(UserError, match="already ends the run these settings describe") as err:
        run(tiny_model_dir, sixteen, out, **keys)
    assert "checkpoint-2" in str(err.value) and "\n" not in str(err.value)
    assert (out / "model.safetensors").read_bytes() == model
    more = {"max_steps": 3} if "max_steps" in length else {"num_train_epochs": 2}
    run(tiny_model_dir, sixteen, out, **{**keys, **more})  # more steps asked: continues from checkpoint-2
    steps = [r["step"] for r in map(json.loads, (out / "train_log.jsonl").read_text().splitlines()) if "loss" in r]
    assert steps[-1] == (3 if "max_steps" in length else 4)


def test_fewer_steps_than_logging_steps_still_log_the_final_loss(tiny_model_dir, sixteen, tmp_path) -> None:
    out = tmp_path / "short"
    run(tiny_model_dir, sixteen, out, max_steps=3, logging_steps=10)
    steps = [r for r in map(json.loads, (out / "train_log.jsonl").read_text().splitlines()) if "loss" in r]
    assert [r["step"] for r in steps] == [3]
    summary = json.loads((out / SUMMARY).read_text())
    assert summary["final_train_loss"] == steps[0]["loss"] and summary["final_train_loss"] > 0


def test_evaluation_only_run_needs_no_evaluation_strategy(tiny_model_dir, sixteen, tmp_path) -> None:
    """do_train false, do_eval true: paddleformers refused the default "evaluation_strategy": "no"."""
    source = [{"name": "chatml_dataset", "data_files": str(sixteen)}]
    metrics = run(tiny_model_dir, sixteen, tmp_path / "eval_only", do_train=False, do_eval=True,
                  dataset={"train": [], "eval": source}, per_device_eval_batch_size=4)  # fmt: skip
    assert metrics["eval_loss"] > 0
