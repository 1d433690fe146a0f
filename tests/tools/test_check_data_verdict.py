"""check_data.py can gate a script: exit code 1 and verdict "fail" exactly when training would stop (no usable
training record, skips over max_skip_ratio, a source whose records all fail, no usable eval record while eval is
on); packing is spoken of only when it is on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from paddlemix.tools import check_data

CONFIG = Path(__file__).resolve().parents[2] / "paddlemix" / "config" / "tiny" / "sft_argument.json"
NO_EVAL = ["--do_eval", "false", "--evaluation_strategy", "no"]


def run(workspace: Path, *args: str, capsys: pytest.CaptureFixture) -> tuple[int, dict, str]:
    """check_data's exit code, JSON report and console (stdout + stderr) for CONFIG with `args`."""
    with pytest.raises(SystemExit) as ended:
        check_data.main([str(CONFIG), *args, "--report", str(workspace / "report.json")])
    out = capsys.readouterr()
    return ended.value.code, json.loads((workspace / "report.json").read_text()), out.out + out.err


def source(path: Path | str) -> str:
    return json.dumps({"name": "chatml_dataset", "data_files": str(path)})


def test_clean_data_passes_and_says_nothing_of_packing(workspace: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(workspace)
    code, report, console = run(workspace, capsys=capsys)
    assert (code, report["verdict"], report["problems"], report["warnings"]) == (0, "pass", [], [])
    assert "mixtoken_fill" not in report["splits"]["train"] and "MIXToken" not in console
    assert "verdict: pass" in console
    code, report, console = run(workspace, "--mixtoken", "true", capsys=capsys)
    assert code == 0 and 0 < report["splits"]["train"]["mixtoken_fill"] <= 1 and "MIXToken fill" in console


def test_skips_over_the_budget_fail_and_within_it_warn(workspace: Path, faulty_data: Path, monkeypatch,
                                                      capsys) -> None:  # fmt: skip
    """faulty.jsonl: 9 of its 37 records fail by their headers (24 %)."""
    monkeypatch.chdir(workspace)
    data = ["--dataset", f'{{"train": [{source(faulty_data)}]}}', *NO_EVAL]
    code, report, console = run(workspace, *data, capsys=capsys)
    assert code == 1 and report["verdict"] == "fail"
    assert report["problems"] == ["9 of 37 training records would be skipped, more than max_skip_ratio 0.05"]
    assert "verdict: fail, training would stop" in console
    code, report, _ = run(workspace, *data, "--max_skip_ratio", "0.5", capsys=capsys)
    assert code == 0 and report["verdict"] == "warn" and report["problems"] == []
    assert report["warnings"] == ['train source "chatml_dataset:faulty.jsonl": 9 of 37 records would be skipped']


def test_no_usable_training_record_fails(workspace: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(workspace)
    bad = workspace / "all_bad.jsonl"
    bad.write_text('{"question": "q", "answer": "a"}\n' * 3)
    code, report, _ = run(workspace, "--dataset", f'{{"train": [{source(bad)}]}}', *NO_EVAL, capsys=capsys)
    assert code == 1 and report["problems"] == ["no usable training record: all 3 would be skipped"]


def test_empty_eval_split_fails_only_when_eval_is_on(workspace: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(workspace)
    bad = workspace / "bad_eval.jsonl"
    bad.write_text(json.dumps({"images": ["missing.png"], "messages": [{"role": "user", "content": "<image>Q"},
                                                                       {"role": "assistant", "content": "A"}]}) + "\n")  # fmt: skip
    dataset = f'{{"train": [{source("shapes/train.jsonl")}], "eval": [{source(bad)}]}}'
    code, report, _ = run(workspace, "--dataset", dataset, capsys=capsys)
    assert code == 1 and report["problems"] == ["no usable eval record (all 1 would be skipped) while eval is on"]
    code, report, _ = run(workspace, "--dataset", dataset, *NO_EVAL, capsys=capsys)
    assert code == 0 and report["verdict"] == "warn"


def test_a_source_whose_records_all_fail_fails_the_mix(workspace: Path, monkeypatch, capsys) -> None:
    """Training stops at once on a source whose first 20 records all fail, even when other sources are fine."""
    monkeypatch.chdir(workspace)
    bad = workspace / "wrong_shape.jsonl"
    bad.write_text('{"question": "q", "answer": "a"}\n' * 25)
    dataset = f'{{"train": [{source("shapes/train.jsonl")}, {source(bad)}]}}'
    code, report, _ = run(workspace, "--dataset", dataset, *NO_EVAL, "--max_skip_ratio", "1", capsys=capsys)
    assert code == 1 and len(report["problems"]) == 1
    assert report["problems"][0].startswith('train source "chatml_dataset:wrong_shape.jsonl": all its records fail')


def test_show_labels_what_trains_with_keep_empty_think(workspace: Path, monkeypatch, capsys) -> None:
    """--show encodes with the source's `keep_empty_think`, as training does (it once ignored the key)."""
    import runpy

    THINKING = runpy.run_path(str(Path(__file__).parents[1] / "processors" / "test_answer_boundaries.py"))["THINKING"]
    monkeypatch.chdir(workspace)
    (workspace / "thinking.jinja").write_text(THINKING)
    shown = {}
    for keep in (True, False):
        spec = {"name": "chatml_dataset", "data_files": "shapes/train.jsonl", "chat_template": "thinking.jinja",
                "keep_empty_think": keep}  # fmt: skip
        code, _, console = run(workspace, "--dataset", json.dumps({"train": [spec]}), *NO_EVAL, "--show", "1",
                               capsys=capsys)  # fmt: skip
        assert code == 0, console
        shown[keep] = console
    assert "[[<think>" in shown[True] and "[[<think>" not in shown[False]
