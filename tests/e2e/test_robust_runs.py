"""Long-run robustness through the real tools: bad data, budgets, interrupted saves, NaN losses, wrong folders."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import PLANTED

from paddlemix.utils import checkpoints

pytestmark = pytest.mark.slow
CONFIG = Path(__file__).resolve().parents[2] / "paddlemix" / "config" / "tiny" / "sft_argument.json"
SHORT = ["--do_eval", "false", "--evaluation_strategy", "no", "--per_device_train_batch_size", "4"]
FAULTY = '{"train": [{"name": "chatml_dataset", "data_files": "%s"}]}'


def test_planted_faults_are_skipped_and_the_run_finishes(workspace: Path, faulty_data: Path, run_tool) -> None:
    run_tool("supervised_finetune.py", str(CONFIG), *SHORT, "--dataset", FAULTY % faulty_data, "--max_length", "128",
             "--max_skip_ratio", "0.5", "--max_steps", "10", cwd=workspace)  # fmt: skip
    out = workspace / "checkpoints" / "tiny_sft"
    skipped = [json.loads(line) for line in (out / "skipped_samples.jsonl").read_text().splitlines()]
    assert {r["index"] for r in skipped} == set(PLANTED)
    assert (out / "model.safetensors").is_file()
    assert json.loads((out / "all_results.json").read_text())["skipped_samples"] == len(PLANTED)


def test_skip_budget_exits_2_with_a_summary(workspace: Path, faulty_data: Path, run_tool) -> None:
    proc = run_tool("supervised_finetune.py", str(CONFIG), *SHORT, "--dataset", FAULTY % faulty_data,
                    "--max_length", "128", "--max_steps", "10", cwd=workspace, check=False)  # fmt: skip
    assert proc.returncode == 2
    assert "more than max_skip_ratio 5%" in proc.stderr and "Traceback" not in proc.stderr


def test_check_data_reports_every_reason(workspace: Path, faulty_data: Path, run_tool) -> None:
    proc = run_tool("check_data.py", str(CONFIG), *SHORT, "--dataset", FAULTY % faulty_data, "--max_length", "128",
                    "--mixtoken", "true", "--report", "report.json", cwd=workspace, check=False)  # fmt: skip
    assert proc.returncode == 1, "9 of 37 records skipped is over max_skip_ratio 0.05: training would stop"
    report = json.loads((workspace / "report.json").read_text())
    assert report["verdict"] == "fail" and "Traceback" not in proc.stderr
    source = report["splits"]["train"]["sources"]["chatml_dataset:faulty.jsonl"]
    # Headers only: a file truncated after its header is caught when the trainer decodes it, not here.
    assert source["skipped"] == len(PLANTED) - 1 and source["longer_than_max_length"] == 1
    assert source["skip_reasons"]["image not found"] == 1
    assert source["tokens"]["max"] > 128 and 0 < report["splits"]["train"]["mixtoken_fill"] <= 1
    assert "malformed JSON line" in proc.stdout and "longer than max_length" in proc.stdout


def test_partial_checkpoint_is_ignored_on_resume(workspace: Path, run_tool) -> None:
    args = [str(CONFIG), *SHORT, "--max_steps", "6", "--save_steps", "2", "--save_total_limit", "3"]
    run_tool("supervised_finetune.py", *args, cwd=workspace)
    out = workspace / "checkpoints" / "tiny_sft"
    # Simulate a kill during the save of step 6: the marker is missing and a file is cut short.
    (out / "checkpoint-6" / checkpoints.COMPLETE).unlink()
    state = next((out / "checkpoint-6" / "model_state").iterdir())
    state.write_bytes(state.read_bytes()[:10])
    second = run_tool("supervised_finetune.py", *args, cwd=workspace)
    assert "checkpoint-4" in second.stderr and "resuming from" in second.stderr


def test_output_dir_of_another_run_is_refused(workspace: Path, run_tool) -> None:
    run_tool("supervised_finetune.py", str(CONFIG), *SHORT, "--max_steps", "1", cwd=workspace)
    proc = run_tool("supervised_finetune.py", str(CONFIG), *SHORT, "--max_steps", "2", "--max_length", "96",
                    cwd=workspace, check=False)  # fmt: skip
    assert proc.returncode == 2 and "holds a different run (max_length differ" in proc.stderr


def test_pickle_weights_need_an_opt_in(workspace: Path, run_tool) -> None:
    model = workspace / "pickled"
    shutil.copytree(workspace / "tiny_qwen2_5_vl", model)
    (model / "model.safetensors").rename(model / "model_state.pdparams")
    proc = run_tool("supervised_finetune.py", str(CONFIG), *SHORT, "--model_name_or_path", str(model),
                    "--max_steps", "1", cwd=workspace, check=False)  # fmt: skip
    assert proc.returncode == 2 and "allow_pickle_weights" in proc.stderr


@pytest.mark.parametrize("packing", ["true", "false"], ids=["mixtoken", "padded"])
def test_unusable_data_stops_before_training(workspace: Path, run_tool, packing: str) -> None:
    bad = workspace / "all_bad.jsonl"
    bad.write_text('{"question": "q", "answer": "a"}\n' * 40)
    proc = run_tool("supervised_finetune.py", str(CONFIG), *SHORT, "--dataset", FAULTY % bad, "--mixtoken", packing,
                    "--max_steps", "3", cwd=workspace, check=False)  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "looks mis-formatted" in proc.stderr and "Traceback" not in proc.stderr


def deep_fault_data(folder: Path, faulty_data: Path, good: int, bad: int, huge_at: int | None = None) -> Path:
    """`good` usable records, then `bad` records whose image is missing; optionally record `huge_at` is replaced by
    one whose image header announces 20000x20000 pixels (the decompression-bomb case)."""
    from paddlemix.testing.wild_images import huge_png_header

    (folder / "huge.png").write_bytes(huge_png_header())
    usable = faulty_data.read_text().splitlines()[len(PLANTED) + 1 :]  # the faulty file's good records
    records = [usable[i % len(usable)] for i in range(good)]
    records += [records[0].replace(json.loads(records[0])["images"][0], f"missing{i}.png") for i in range(bad)]
    if huge_at is not None:
        records[huge_at] = records[0].replace(json.loads(records[0])["images"][0], str(folder / "huge.png"))
    path = folder / "deep.jsonl"
    path.write_text("\n".join(records) + "\n")
    return path


LOADER_CASES = pytest.mark.parametrize(
    "workers, packing", [("0", "false"), ("2", "false"), ("0", "true"), ("2", "true")],
    ids=["thread-padded", "workers-padded", "thread-mixtoken", "workers-mixtoken"],
)  # fmt: skip
NO_HANG_SECONDS = 300  # a run that stalls fails here instead of blocking the suite


@LOADER_CASES
def test_oversized_image_deep_in_a_file_is_a_skip(workspace, faulty_data, run_tool, workers, packing) -> None:
    # 40 records, 10 steps of 4: one whole epoch, so the padded run meets record 30 wherever the shuffle puts it.
    data = deep_fault_data(workspace, faulty_data, good=40, bad=0, huge_at=30)
    run_tool("supervised_finetune.py", str(CONFIG), *SHORT, "--dataset", FAULTY % data, "--mixtoken", packing,
             "--dataloader_num_workers", workers, "--pack_window", "64", "--max_steps", "10", "--save_steps", "100",
             cwd=workspace, timeout=NO_HANG_SECONDS)  # fmt: skip
    out = workspace / "checkpoints" / "tiny_sft"
    skipped = [json.loads(line) for line in (out / "skipped_samples.jsonl").read_text().splitlines()]
    assert {r["index"] for r in skipped} == {30}
    assert skipped[0]["reason"].startswith("image too large (20000x20000)")
    assert (out / "model.safetensors").is_file()
    assert json.loads((out / "all_results.json").read_text())["skipped_samples"] == 1


@LOADER_CASES
def test_loader_failure_deep_in_a_file_exits_2_instead_of_hanging(
    workspace, faulty_data, run_tool, workers, packing
) -> None:
    data = deep_fault_data(workspace, faulty_data, good=40, bad=60)
    proc = run_tool("supervised_finetune.py", str(CONFIG), *SHORT, "--dataset", FAULTY % data, "--mixtoken", packing,
                    "--dataloader_num_workers", workers, "--pack_window", "8", "--max_steps", "40",
                    "--seed", "3", cwd=workspace, check=False, timeout=NO_HANG_SECONDS)  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "more than max_skip_ratio 5%" in proc.stderr and "Traceback" not in proc.stderr


def test_final_model_is_saved_even_when_the_last_evaluation_fails(
    workspace, faulty_data, shapes_data, run_tool
) -> None:
    """Eval records whose headers pass but whose pixels are cut short: every evaluation fails inside the loader.
    The run ends with exit code 2 (not a hang), and the model trained to the last step is on disk."""
    good = sorted((shapes_data["train"].parent / "images").glob("train_*.png"))[:2]
    lines = []
    for i, image in enumerate(good):
        cut = workspace / f"cut{i}.png"
        cut.write_bytes(image.read_bytes()[: image.stat().st_size // 2])
        lines.append(
            json.dumps(
                {
                    "images": [str(cut)],
                    "messages": [{"role": "user", "content": "<image>Q"}, {"role": "assistant", "content": "A"}],
                }
            )
        )
    (workspace / "cut_eval.jsonl").write_text("\n".join(lines) + "\n")
    dataset = json.dumps(
        {
            "train": [{"name": "chatml_dataset", "data_files": str(shapes_data["train"])}],
            "eval": [{"name": "chatml_dataset", "data_files": str(workspace / "cut_eval.jsonl")}],
        }
    )
    proc = run_tool("supervised_finetune.py", str(CONFIG), "--dataset", dataset, "--max_steps", "2",
                    "--eval_steps", "2", "--save_steps", "100", "--max_skip_ratio", "1.0", cwd=workspace,
                    check=False, timeout=NO_HANG_SECONDS)  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "no usable sample in the eval data" in proc.stderr
    out = workspace / "checkpoints" / "tiny_sft"
    assert (out / "model.safetensors").is_file() and (out / "run_args.json").is_file()


def test_one_missing_image_warns_once_with_loader_workers(workspace: Path, shapes_data, run_tool) -> None:
    """A data-loader worker meets the bad record first; the training process alone warns and counts it: one
    warning naming image_root, and an epoch of the 32-record file is 32 seen, 1 skipped (not two warnings, 33)."""
    records = shapes_data["train"].read_text().splitlines()
    assert len(records) == 32
    bad = json.loads(records[5])
    bad["images"] = ["images/missing.png"]
    records = [json.dumps({**r, "images": [str(shapes_data["train"].parent / i) for i in r["images"]]})
               if n != 5 else json.dumps(bad) for n, r in enumerate(map(json.loads, records))]  # fmt: skip
    path = workspace / "one_missing.jsonl"
    path.write_text("\n".join(records) + "\n")
    proc = run_tool("supervised_finetune.py", str(CONFIG), *SHORT, "--dataset", FAULTY % path, "--max_steps", "-1",
                    "--num_train_epochs", "1", "--dataloader_num_workers", "1", "--max_skip_ratio", "0.5",
                    cwd=workspace)  # fmt: skip
    warnings = [line for line in proc.stderr.replace("\r", "\n").splitlines() if "skipped chatml_dataset" in line]
    assert len(warnings) == 1, warnings
    assert 'relative path "images/missing.png" looked up in' in warnings[0] and '"image_root"' in warnings[0]
    results = json.loads((workspace / "checkpoints" / "tiny_sft" / "all_results.json").read_text())
    assert results["skipped_by_source"] == {"chatml_dataset:one_missing.jsonl": {"seen": 32, "skipped": 1}}
