"""Train, then ask (issue 19), through the real tools: the output of a base-layout checkpoint (eos <|endoftext|>)
stops on the token that ends its trained answers, and a template that would train other prompts than inference
asks is reported at training start and by check_data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from paddlemix.testing.tiny_model import build_tiny_qwen2_5_vl

CONFIG = Path(__file__).resolve().parents[2] / "paddlemix" / "config" / "tiny" / "sft_argument.json"
SHORT = ("--max_steps", "2", "--do_eval", "false", "--save_strategy", "no", "--logging_steps", "1")
GLUED = {"conversation": ["<|im_start|>user\n{{user}}<|im_end|>\n<|im_start|>assistant\nThe", "{{bot}}<|im_end|>\n"]}


@pytest.fixture(scope="module")
def base_qwen(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_qwen2_5_vl(tmp_path_factory.mktemp("base") / "tiny_base", base_layout=True)


def test_base_layout_output_lists_the_end_of_turn_token_among_eos_ids(workspace: Path, base_qwen: Path,
                                                                      run_tool) -> None:  # fmt: skip
    proc = run_tool("supervised_finetune.py", str(CONFIG), *SHORT, "--model_name_or_path", str(base_qwen),
                    "--output_dir", "out", cwd=workspace)  # fmt: skip
    tokenizer = json.loads((base_qwen / "tokenizer_config.json").read_text())["added_tokens_decoder"]
    ids = {entry["content"]: int(i) for i, entry in tokenizer.items()}
    saved = json.loads((workspace / "out" / "generation_config.json").read_text())
    assert saved["eos_token_id"] == [ids["<|endoftext|>"], ids["<|im_end|>"]]  # the base's id kept, first
    assert json.loads((base_qwen / "generation_config.json").read_text())["eos_token_id"] == ids["<|endoftext|>"]
    log = proc.stdout + proc.stderr
    assert "<|im_end|> ends every trained answer" in log and "training ids differ" not in log


def test_template_that_trains_other_prompts_is_reported(workspace: Path, run_tool) -> None:
    (workspace / "glued.json").write_text(json.dumps(GLUED))
    dataset = json.dumps({"train": [{"name": "chatml_dataset", "data_files": "shapes/train.jsonl",
                                     "chat_template": "glued.json"}]})  # fmt: skip
    proc = run_tool("check_data.py", str(CONFIG), "--dataset", dataset, "--do_eval", "false", "--report", "report.json",
                    cwd=workspace)  # fmt: skip
    report = json.loads((workspace / "report.json").read_text())
    problem = report["splits"]["train"]["templates"]["chatml_dataset:train.jsonl"]
    assert problem.startswith('source "chatml_dataset:train.jsonl": for a probe conversation, the training ids differ')
    assert f"warning: {problem}" in proc.stdout
    own = run_tool("check_data.py", str(CONFIG), "--report", "own.json", cwd=workspace)
    assert all(v is None for v in json.loads((workspace / "own.json").read_text())["splits"]["train"]["templates"]
               .values())  # fmt: skip
    assert "warning:" not in own.stdout
    run = run_tool("supervised_finetune.py", str(CONFIG), *SHORT, "--dataset", dataset, "--output_dir", "g",
                   cwd=workspace)  # fmt: skip
    assert "for a probe conversation, the training ids differ" in run.stdout + run.stderr
