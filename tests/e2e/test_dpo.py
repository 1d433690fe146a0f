"""`"stage": "dpo"` through the real tool: LoRA (reference = adapters off) with MIXToken and bad pairs skipped with
their reasons, and full fine-tuning with a frozen reference copy; metrics reach train_log.jsonl."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

from paddlemix.testing.pairs import write_bad_pairs, write_shape_pairs

pytestmark = pytest.mark.slow
CONFIG = Path(__file__).resolve().parents[2] / "paddlemix" / "config" / "tiny" / "lora_dpo_argument.json"
METRICS = {"rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen",
           "logps/rejected"}  # fmt: skip


@pytest.fixture()
def pair_workspace(workspace: Path, shapes_data: dict) -> Path:
    (workspace / "pairs").mkdir()
    write_shape_pairs(shapes_data["train"], workspace / "pairs" / "pairs_swift.jsonl", "swift")
    write_shape_pairs(shapes_data["eval"], workspace / "pairs" / "pairs_eval.jsonl", "trl")
    image = sorted((shapes_data["train"].parent / "images").glob("*.png"))[0]
    write_bad_pairs(image, workspace / "pairs" / "bad.jsonl")
    return workspace


def records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]


def test_lora_dpo_with_mixtoken_logs_preference_metrics(pair_workspace: Path, run_tool) -> None:
    dataset = {"train": [{"name": "chatml_dataset", "data_files": ["pairs/pairs_swift.jsonl", "pairs/bad.jsonl"]}],
               "eval": [{"name": "chatml_dataset", "data_files": "pairs/pairs_eval.jsonl"}]}  # fmt: skip
    run_tool("supervised_finetune.py", str(CONFIG), "--dataset", json.dumps(dataset), "--mixtoken", "true",
             "--max_length", "256", "--per_device_train_batch_size", "1", "--pref_ftx", "0.5",
             "--max_skip_ratio", "0.5", "--load_best_model_at_end", "true", "--metric_for_best_model",
             "eval_logps/accuracies", "--greater_is_better", "true", "--output_dir", "out", cwd=pair_workspace)  # fmt: skip
    out = pair_workspace / "out"
    logged = records(out)
    train = [r for r in logged if "loss" in r]
    assert train[0]["loss"] == pytest.approx(0.6931472 + 0.5 * train[0]["sft_loss"], abs=1e-5)  # policy == reference
    assert train[0]["rewards/chosen"] == 0.0 and METRICS | {"sft_loss"} <= set(train[0])
    assert all(math.isfinite(r["loss"]) for r in train)
    evals = [r for r in logged if "eval_loss" in r]
    assert evals and {f"eval_{m}" for m in METRICS} <= set(evals[-1])
    assert {"adapter_config.json", "adapter_model.safetensors", "loss_curve.png"} <= {p.name for p in out.iterdir()}
    results = json.loads((out / "all_results.json").read_text())
    best = max(r["eval_logps/accuracies"] for r in evals)
    assert results["best_eval_logps/accuracies"] == best and results["best_checkpoint"].startswith("checkpoint-")
    assert (
        json.loads((out / "train_summary.json").read_text())["final_eval_rewards/accuracies"]
        == evals[-1]["eval_rewards/accuracies"]
    )
    skipped = [json.loads(line)["reason"] for line in (out / "skipped_samples.jsonl").read_text().splitlines()]
    assert any("identical" in r for r in skipped) and any("no rejected answer" in r for r in skipped)
    assert any("max_length" in r for r in skipped) and any("2 images" in r for r in skipped)


def test_full_dpo_precomputed_reference_trains_like_the_frozen_copy(pair_workspace: Path, run_tool) -> None:
    common = ["--lora", "false", "--max_steps", "2", "--do_eval", "false", "--evaluation_strategy", "no",
              "--dataset", json.dumps({"train": [{"name": "chatml_dataset", "data_files": "pairs/pairs_swift.jsonl"}]})]  # fmt: skip
    proc = run_tool("supervised_finetune.py", str(CONFIG), *common, "--output_dir", "copy", cwd=pair_workspace)
    assert "the reference is a frozen copy" in proc.stderr
    precompute = [*common, "--precompute_ref_log_probs", "true", "--save_steps", "1", "--save_total_limit", "3"]
    proc = run_tool("supervised_finetune.py", str(CONFIG), *precompute, "--output_dir", "pre", cwd=pair_workspace)
    assert "computing the reference log-probs of every pair once" in proc.stderr and "precomputed once" in proc.stderr
    assert len(json.loads((pair_workspace / "pre" / "reference_logps.json").read_text())) == 32
    copy = [r for r in records(pair_workspace / "copy") if "loss" in r]
    pre = [r for r in records(pair_workspace / "pre") if "loss" in r]
    assert copy[0]["loss"] == pytest.approx(math.log(2), abs=1e-5)
    assert copy[1]["rewards/margins"] != 0.0
    for a, b in zip(copy, pre):
        for key in ("loss", *METRICS):
            assert b[key] == pytest.approx(a[key], abs=1e-5), key
    assert (pair_workspace / "pre" / "model.safetensors").is_file()
    # stopped after step 1 and started again: resumes there, reuses the stored reference, trains step 2 alike
    resumed = pair_workspace / "resumed"
    shutil.copytree(pair_workspace / "pre", resumed)
    shutil.rmtree(resumed / "checkpoint-2")
    for name in ("model.safetensors", "train_log.jsonl"):
        (resumed / name).unlink()
    proc = run_tool("supervised_finetune.py", str(CONFIG), *precompute, "--output_dir", "resumed", cwd=pair_workspace)
    assert "resuming from" in proc.stderr and "reference log-probs of 32 pairs read from" in proc.stderr
    assert "computing the reference" not in proc.stderr  # no reference model loaded again
    again = [r for r in records(resumed) if "loss" in r]
    assert [r["step"] for r in again] == [2]
    for key in ("loss", *METRICS):
        assert again[0][key] == pytest.approx(pre[1][key], abs=1e-5), key


def test_check_data_reports_pairs_and_bad_pair_reasons(pair_workspace: Path, run_tool) -> None:
    dataset = {"train": [{"name": "chatml_dataset", "data_files": ["pairs/pairs_swift.jsonl", "pairs/bad.jsonl"]}]}
    proc = run_tool("check_data.py", str(CONFIG), "--dataset", json.dumps(dataset), "--do_eval", "false",
                    "--max_skip_ratio", "0.5", "--report", "report.json", "--show", "2", cwd=pair_workspace)  # fmt: skip
    report = json.loads((pair_workspace / "report.json").read_text())
    source = next(iter(report["splits"]["train"]["sources"].values()))
    assert report["unit"] == "pairs" and "pairs, 6 skipped" in proc.stdout and "39 pairs checked" in proc.stdout
    assert report["verdict"] == "warn"
    assert source["skip_reasons"] == {"no rejected answer": 3, "chosen and rejected answers are identical": 1,
                                      "1 <image> placeholders but 2 images": 1, "longer than max_length": 1}  # fmt: skip
    assert source["usable"] == source["records"] - 6
    # --show 2: the first pair as the conversations it trains, its chosen then its rejected answer labelled
    first = json.loads((pair_workspace / "pairs" / "pairs_swift.jsonl").read_text().splitlines()[0])
    shown = proc.stdout.split("--- ")[1:]
    assert len(shown) == 2 and all(part.startswith(f"{next(iter(report['splits']['train']['sources']))} record #0")
                                   for part in shown)  # fmt: skip
    assert f"[[{first['messages'][-1]['content']}<|im_end|>]]" in shown[0]
    assert f"[[{first['rejected_response']}<|im_end|>]]" in shown[1]
